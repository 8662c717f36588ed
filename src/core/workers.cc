#include <fmt/format.h>

#include "core/job_hooks.h"
#include "spool/client.h"
#include "spool/worker.h"

namespace spool {

Workers& Workers::Add(std::unique_ptr<WorkerBase> worker) {
  if (!status_.ok()) return *this;
  if (worker == nullptr) {
    status_ = Status::InvalidArgument("Workers::Add was given a null worker");
    return *this;
  }
  std::string kind(worker->Kind());
  if (kind.empty()) {
    status_ = Status::InvalidArgument("a worker has an empty kind: set Args::kKind");
    return *this;
  }
  if (Status st = ValidateKind(kind); !st.ok()) {
    status_ = st.WithContext("Workers::Add");
    return *this;
  }
  if (by_kind_.contains(kind)) {
    status_ = Status::InvalidArgument(
        fmt::format("two workers are registered for kind \"{}\": register each kind once", kind));
    return *this;
  }
  by_kind_.emplace(std::move(kind), std::move(worker));
  return *this;
}

WorkerBase* Workers::Find(std::string_view kind) const {
  auto it = by_kind_.find(kind);
  return it == by_kind_.end() ? nullptr : it->second.get();
}

int64_t JobContext::snoozes() const { return internal::SnoozesIn(job_.metadata); }

const std::any& JobContext::AppAny() const { return client_.options().app; }

void JobContext::Log(LogLevel level, std::string_view message) const {
  if (logger_) logger_(level, fmt::format("[{} #{}] {}", job_.kind, job_.id, message));
}

}  // namespace spool
