#include "spool/status.h"

#include <string>

namespace spool {

std::string_view CodeName(Status::Code code) {
  switch (code) {
    case Status::Code::kOk:
      return "OK";
    case Status::Code::kNotFound:
      return "NotFound";
    case Status::Code::kAlreadyExists:
      return "AlreadyExists";
    case Status::Code::kInvalidArgument:
      return "InvalidArgument";
    case Status::Code::kFailedPrecondition:
      return "FailedPrecondition";
    case Status::Code::kRetryable:
      return "Retryable";
    case Status::Code::kConnectionLost:
      return "ConnectionLost";
    case Status::Code::kCommitInDoubt:
      return "CommitInDoubt";
    case Status::Code::kCancelled:
      return "Cancelled";
    case Status::Code::kInternal:
      return "Internal";
  }
  return "Unknown";
}

const std::string& Status::message() const noexcept {
  static const std::string kEmpty;
  return rep_ ? rep_->message : kEmpty;
}

const std::string& Status::native_code() const noexcept {
  static const std::string kEmpty;
  return rep_ ? rep_->native_code : kEmpty;
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string s(CodeName(rep_->code));
  s += ": ";
  s += rep_->message;
  return s;
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return *this;
  std::string msg(context);
  msg += ": ";
  msg += rep_->message;
  return Status(rep_->code, std::move(msg), rep_->native_code);
}

}  // namespace spool
