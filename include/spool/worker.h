#pragma once

#include <any>
#include <concepts>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>

#include "spool/job.h"
#include "spool/options.h"
#include "spool/status.h"

namespace spool {

class Client;

// A job's args type: a struct with a static kind and nlohmann JSON conversion, e.g.
//   struct SendEmailArgs {
//     static constexpr std::string_view kKind = "send_email";
//     std::string to;
//     NLOHMANN_DEFINE_TYPE_INTRUSIVE(SendEmailArgs, to)
//   };
template <typename A>
concept JobArgs = requires(const A& a, nlohmann::json& j) {
  { A::kKind } -> std::convertible_to<std::string_view>;
  j = a;
  j.get<A>();
};

// What a worker's Work returns. Not an error type: snooze and cancel are normal outcomes.
class Outcome {
 public:
  enum class Kind { kDone, kFail, kSnooze, kCancel };

  // The job succeeded: it becomes completed.
  static Outcome Done() { return Outcome(Kind::kDone, {}, {}); }
  // The attempt failed: retryable after backoff, or discarded once attempts are used up.
  static Outcome Fail(std::string message) { return Outcome(Kind::kFail, std::move(message), {}); }
  // Run again after `delay` (0 to kMaxDelay) without consuming an attempt: ctx.attempt() stays
  // as it was, and the job's metadata "snoozes" (ctx.snoozes()) grows by one.
  static Outcome Snooze(Duration delay) { return Outcome(Kind::kSnooze, {}, delay); }
  // Stop for good: the job becomes cancelled with `reason` in its error history.
  static Outcome Cancel(std::string reason) {
    return Outcome(Kind::kCancel, std::move(reason), {});
  }
  // OK means Done; an error means Fail with the status text. Lets Work
  // `return ctx.client().Insert(...).status();`.
  // NOLINTNEXTLINE(google-explicit-constructor)
  Outcome(const Status& status)
      : kind_(status.ok() ? Kind::kDone : Kind::kFail),
        message_(status.ok() ? std::string() : status.ToString()) {}

  Kind kind() const { return kind_; }
  const std::string& message() const { return message_; }
  Duration snooze_delay() const { return delay_; }

 private:
  Outcome(Kind kind, std::string message, Duration delay)
      : kind_(kind), message_(std::move(message)), delay_(delay) {}
  Kind kind_;
  std::string message_;
  Duration delay_{};
};

// What a running job sees: its row, its cancellation, and the client (to enqueue follow-ups).
// Owned by the runtime; valid only during Work. Cancelled() may be read from any thread.
class JobContext {
 public:
  JobContext(const JobRow& job, Client& client, std::stop_token stop,
             std::optional<TimePoint> deadline, const Logger& logger)
      : job_(job), client_(client), stop_(std::move(stop)), deadline_(deadline), logger_(logger) {}

  const JobRow& job() const { return job_; }
  int attempt() const { return job_.attempt; }
  // How many times this job has snoozed: metadata key "snoozes", as River keeps it; 0 when it
  // never has (or the key holds something other than a non-negative integer).
  int64_t snoozes() const;
  Client& client() const { return client_; }
  // Requested when the job's timeout passes, an admin cancels it, or the client stops hard.
  const std::stop_token& stop_token() const { return stop_; }
  bool Cancelled() const { return stop_.stop_requested(); }
  // When the timeout cancels this attempt, if it has one.
  std::optional<TimePoint> deadline() const { return deadline_; }
  // Logs through the client's logger, prefixed with the job's kind and id.
  void Log(LogLevel level, std::string_view message) const;
  // The application's object set as ClientOptions::app = std::shared_ptr<T>; nullptr when none
  // is set or it holds another type.
  template <typename T>
  T* App() const {
    const auto* held = std::any_cast<std::shared_ptr<T>>(&AppAny());
    return held != nullptr ? held->get() : nullptr;
  }

 private:
  const std::any& AppAny() const;

  const JobRow& job_;
  Client& client_;
  std::stop_token stop_;
  std::optional<TimePoint> deadline_;
  const Logger& logger_;
};

// The type-erased worker the runtime calls. Implement Worker<Args> rather than this.
class WorkerBase {
 public:
  virtual ~WorkerBase() = default;
  virtual std::string_view Kind() const = 0;
  // Parses job.args and runs the job. Exceptions are the runtime's to catch.
  virtual Outcome WorkJob(JobContext& ctx) = 0;
  // Time limit for one attempt; nullopt uses ClientOptions::job_timeout, zero means none (and
  // over kMaxDelay, kMaxDelay). If it throws, the error is logged and job_timeout used.
  virtual std::optional<Duration> Timeout(const JobRow& /*job*/) const { return std::nullopt; }
  // Backoff after a failed attempt (0 to kMaxDelay); nullopt uses the client's retry policy, as
  // does a throw (logged).
  virtual std::optional<Duration> NextRetry(const JobRow& /*job*/) const { return std::nullopt; }
  // OK when `args_json` is args this worker can run; InvalidArgument saying why otherwise.
  virtual Status CheckArgs(std::string_view /*args_json*/) const { return Status::Ok(); }
};

// Base class for a job's worker:
//   class SendEmailWorker : public spool::Worker<SendEmailArgs> {
//     spool::Outcome Work(spool::JobContext& ctx, const SendEmailArgs& args) override;
//   };
// Work runs on a pool thread, possibly on several threads at once for different jobs: it must
// be thread safe. Throwing anything records a failed attempt with the exception's message (a
// std::exception's what(), a thrown std::string or string literal, else the thrown type's name).
template <JobArgs A>
class Worker : public WorkerBase {
 public:
  using Args = A;
  virtual Outcome Work(JobContext& ctx, const A& args) = 0;

  std::string_view Kind() const final { return A::kKind; }
  Outcome WorkJob(JobContext& ctx) final {
    A args;
    if (Status parsed = Parse(ctx.job().args, args); !parsed.ok()) {
      return Outcome::Fail(parsed.message());
    }
    return Work(ctx, args);
  }
  Status CheckArgs(std::string_view args_json) const final {
    A args;
    return Parse(args_json, args);
  }

 private:
  static Status Parse(std::string_view json, A& out) {
    if (Status deep = ValidateJsonDepth(json, "args"); !deep.ok()) {
      return Status::InvalidArgument("cannot parse args of kind " + std::string(A::kKind) + ": " +
                                     deep.message());
    }
    try {
      out = nlohmann::json::parse(json).template get<A>();
    } catch (const std::exception& e) {
      return Status::InvalidArgument("cannot parse args of kind " + std::string(A::kKind) + ": " +
                                     e.what());
    }
    return Status::Ok();
  }
};

// The set of workers a client runs, by kind. Move-only.
class Workers {
 public:
  Workers() = default;
  Workers(Workers&&) noexcept = default;
  Workers& operator=(Workers&&) noexcept = default;

  // Registers a worker constructed from `ctor_args`. A second worker for the same kind is an
  // error reported by Client::Open.
  template <typename W, typename... CtorArgs>
  Workers& Add(CtorArgs&&... ctor_args) {
    return Add(std::make_unique<W>(std::forward<CtorArgs>(ctor_args)...));
  }
  Workers& Add(std::unique_ptr<WorkerBase> worker);

  // The worker for `kind`, or nullptr.
  WorkerBase* Find(std::string_view kind) const;
  size_t size() const { return by_kind_.size(); }
  // OK, or the first registration error (duplicate kind, null worker, empty kind).
  const Status& status() const { return status_; }

 private:
  std::map<std::string, std::unique_ptr<WorkerBase>, std::less<>> by_kind_;
  Status status_;
};

}  // namespace spool
