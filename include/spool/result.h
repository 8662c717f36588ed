#pragma once

#include <cstdlib>
#include <optional>
#include <type_traits>
#include <utility>

#include "spool/status.h"

namespace spool {

// A value or an error Status: the subset of C++23's std::expected<T, Status> spool uses, with the
// same member names so the type can become an alias once the toolchain has <expected>.
//   Result<int> r = Parse(s);
//   if (!r) return r.error();
//   Use(*r);
// Calling value() or operator* on an error aborts: check has_value() first.
template <typename T>
class [[nodiscard]] Result {
  static_assert(!std::is_same_v<std::decay_t<T>, Status>, "Result<Status> makes no sense");

 public:
  // NOLINTNEXTLINE(google-explicit-constructor): implicit like std::expected.
  Result(T value) : value_(std::move(value)) {}
  // NOLINTNEXTLINE(google-explicit-constructor)
  Result(Status error) : error_(std::move(error)) {
    if (error_.ok()) error_ = Status::Internal("Result constructed from an OK status");
  }

  bool has_value() const noexcept { return value_.has_value(); }
  explicit operator bool() const noexcept { return has_value(); }

  T& value() & { return Checked(); }
  const T& value() const& { return Checked(); }
  T&& value() && { return std::move(Checked()); }
  T& operator*() & { return Checked(); }
  const T& operator*() const& { return Checked(); }
  T&& operator*() && { return std::move(Checked()); }
  T* operator->() { return &Checked(); }
  const T* operator->() const { return &Checked(); }

  // The error; Status::Ok() when a value is held.
  const Status& error() const& noexcept { return error_; }
  Status&& error() && noexcept { return std::move(error_); }
  // Ok when a value is held, the error otherwise.
  Status status() const { return has_value() ? Status::Ok() : error_; }

  template <typename U>
  T value_or(U&& fallback) const& {
    return has_value() ? *value_ : static_cast<T>(std::forward<U>(fallback));
  }

 private:
  T& Checked() {
    if (!value_) std::abort();
    return *value_;
  }
  const T& Checked() const {
    if (!value_) std::abort();
    return *value_;
  }

  std::optional<T> value_;
  Status error_;
};

}  // namespace spool

// Evaluates `rexpr` (a Result); on error returns its status, else moves the value into `lhs`.
#define SPOOL_ASSIGN_OR_RETURN(lhs, rexpr) \
  SPOOL_ASSIGN_OR_RETURN_IMPL_(SPOOL_CONCAT_(spool_result_, __LINE__), lhs, rexpr)
#define SPOOL_CONCAT_INNER_(a, b) a##b
#define SPOOL_CONCAT_(a, b) SPOOL_CONCAT_INNER_(a, b)
#define SPOOL_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, rexpr)  \
  auto tmp = (rexpr);                                  \
  if (!tmp.has_value()) return std::move(tmp).error(); \
  lhs = std::move(*tmp)
