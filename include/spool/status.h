#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>

namespace spool {

// The outcome of a library call that can fail. OK carries no allocation; an error carries a code
// sorted by what the caller can do next, a message that says what went wrong and what to do, and
// the native code of the database (SQLSTATE or SQLite's extended result code) when there is one.
// Thread safety: a Status is a value; distinct objects may be used from distinct threads.
class [[nodiscard]] Status {
 public:
  enum class Code {
    kOk = 0,
    kNotFound,            // the thing asked for does not exist
    kAlreadyExists,       // it exists already (a duplicate)
    kInvalidArgument,     // the caller's input is wrong: fix the input
    kFailedPrecondition,  // the system is not in a state to do it (e.g. schema version)
    kRetryable,           // a transient conflict (busy, serialization): try again
    kConnectionLost,      // the database connection broke: reconnect and try again
    kCommitInDoubt,       // the commit may or may not have happened
    kCancelled,           // the operation was cancelled or timed out
    kInternal,            // a bug or an unexpected database error
  };

  Status() noexcept = default;
  Status(const Status& other) : rep_(other.rep_ ? std::make_unique<Rep>(*other.rep_) : nullptr) {}
  Status& operator=(const Status& other) {
    if (this != &other) rep_ = other.rep_ ? std::make_unique<Rep>(*other.rep_) : nullptr;
    return *this;
  }
  Status(Status&&) noexcept = default;
  Status& operator=(Status&&) noexcept = default;

  static Status Ok() { return Status(); }
  static Status NotFound(std::string msg) { return Status(Code::kNotFound, std::move(msg)); }
  static Status AlreadyExists(std::string msg) {
    return Status(Code::kAlreadyExists, std::move(msg));
  }
  static Status InvalidArgument(std::string msg) {
    return Status(Code::kInvalidArgument, std::move(msg));
  }
  static Status FailedPrecondition(std::string msg) {
    return Status(Code::kFailedPrecondition, std::move(msg));
  }
  static Status Retryable(std::string msg) { return Status(Code::kRetryable, std::move(msg)); }
  static Status ConnectionLost(std::string msg) {
    return Status(Code::kConnectionLost, std::move(msg));
  }
  static Status CommitInDoubt(std::string msg) {
    return Status(Code::kCommitInDoubt, std::move(msg));
  }
  static Status Cancelled(std::string msg) { return Status(Code::kCancelled, std::move(msg)); }
  static Status Internal(std::string msg) { return Status(Code::kInternal, std::move(msg)); }

  // An error with a database's native code attached (SQLSTATE text or SQLite extended code).
  Status(Code code, std::string msg, std::string native_code = {})
      : rep_(code == Code::kOk
                 ? nullptr
                 : std::make_unique<Rep>(Rep{code, std::move(msg), std::move(native_code)})) {}

  bool ok() const noexcept { return rep_ == nullptr; }
  Code code() const noexcept { return rep_ ? rep_->code : Code::kOk; }
  // The message without the code name; empty when ok().
  const std::string& message() const noexcept;
  const std::string& native_code() const noexcept;

  bool IsNotFound() const noexcept { return code() == Code::kNotFound; }
  bool IsAlreadyExists() const noexcept { return code() == Code::kAlreadyExists; }
  bool IsInvalidArgument() const noexcept { return code() == Code::kInvalidArgument; }
  bool IsFailedPrecondition() const noexcept { return code() == Code::kFailedPrecondition; }
  bool IsRetryable() const noexcept { return code() == Code::kRetryable; }
  bool IsConnectionLost() const noexcept { return code() == Code::kConnectionLost; }
  bool IsCancelled() const noexcept { return code() == Code::kCancelled; }
  // True for errors a background loop should retry after a pause rather than report as fatal.
  bool IsTransient() const noexcept {
    return code() == Code::kRetryable || code() == Code::kConnectionLost ||
           code() == Code::kCommitInDoubt;
  }

  // "InvalidArgument: max_workers of queue \"mail\" must be at least 1", or "OK".
  std::string ToString() const;

  // Returns a copy whose message is prefixed with `context: `.
  Status WithContext(std::string_view context) const;

 private:
  struct Rep {
    Code code;
    std::string message;
    std::string native_code;
  };
  std::unique_ptr<Rep> rep_;
};

std::string_view CodeName(Status::Code code);

}  // namespace spool

// Returns early from the enclosing function with the status of `expr` if it is not ok.
#define SPOOL_RETURN_IF_ERROR(expr)                \
  do {                                             \
    ::spool::Status spool_status_ = (expr);        \
    if (!spool_status_.ok()) return spool_status_; \
  } while (false)
