#include "core/unique.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "core/sha256.h"

namespace spool::internal {

Result<UniqueKey> ComputeUniqueKey(std::string_view kind, std::string_view args,
                                   std::string_view queue, TimePoint scheduled_at,
                                   const std::optional<UniqueOptions>& opts) {
  if (!opts) return UniqueKey{};
  SPOOL_RETURN_IF_ERROR(ValidateUniqueOptions(*opts));
  UniqueKey out;
  for (JobState s : opts->by_states) out.states |= UniqueStateBit(s);

  // Length-prefixed parts, so no choice of kind or queue can forge another key.
  std::string material = fmt::format("kind:{}:{}", kind.size(), kind);
  if (opts->by_queue) material += fmt::format("|queue:{}:{}", queue.size(), queue);
  if (opts->by_args) {
    auto j = nlohmann::json::parse(args, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) return Status::InvalidArgument("unique by args needs args to be an object");
    nlohmann::json picked = nlohmann::json::object();
    if (opts->by_args_fields.empty()) {
      picked = std::move(j);
    } else {
      for (const auto& f : opts->by_args_fields) {
        auto it = j.find(f);
        // Most likely a misspelt field: skipped, it would leave every job of the kind with one
        // key, and each insert after the first would be dropped as a duplicate.
        if (it == j.end()) {
          return Status::InvalidArgument(fmt::format(
              "UniqueOptions.by_args_fields names \"{}\", which the args of kind \"{}\" do not "
              "have: use the field's name as it appears in the args' JSON",
              f, kind));
        }
        picked[f] = *it;
      }
    }
    // nlohmann's object is a std::map: dump() sorts keys, so {"a":1,"b":2} and {"b":2,"a":1}
    // give the same key.
    const std::string canon = picked.dump();
    material += fmt::format("|args:{}:{}", canon.size(), canon);
  }
  if (opts->by_period > Duration::zero()) {
    const int64_t us = scheduled_at.time_since_epoch().count();
    const int64_t p = opts->by_period.count();
    // The period's start at or before `us` (floor division; us - p + 1 would overflow for a
    // period near Duration::max()).
    const int64_t q = us / p - (us % p < 0 ? 1 : 0);
    const int64_t bucket = q * p;
    material += fmt::format("|period:{}", bucket);
  }
  const auto digest = Sha256(material);
  out.key.assign(reinterpret_cast<const char*>(digest.data()), digest.size());
  return out;
}

UniqueKey InternalUniqueKey(std::string_view material) {
  UniqueKey out;
  for (JobState s : kAllJobStates) out.states |= UniqueStateBit(s);
  const auto digest = Sha256(material);
  out.key.assign(reinterpret_cast<const char*>(digest.data()), digest.size());
  return out;
}

}  // namespace spool::internal
