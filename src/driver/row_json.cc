#include "driver/row_json.h"

#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>

namespace spool::internal {

// The arrays spool writes (nlohmann dump, SQLite's json_insert and string concatenation) have
// no whitespace, so when the text is printable ASCII without escapes every quote is a delimiter
// and a plain scan suffices; anything else (control bytes, UTF-8 to validate, a trailing comma)
// goes to the full parser, which refuses what is not JSON. Claims read one such array per job.
Result<std::vector<std::string>> ParseStringArray(std::string_view text) {
  std::vector<std::string> out;
  if (text == "[]") return out;
  const bool plain = std::all_of(text.begin(), text.end(),
                                 [](char c) { return c >= 0x20 && c < 0x7f && c != '\\'; });
  if (plain && text.size() >= 3 && text.front() == '[' && text[text.size() - 2] == '"' &&
      text.back() == ']') {
    size_t i = 1;
    bool simple = true;
    while (i < text.size() - 1) {
      if (text[i] != '"') {
        simple = false;
        break;
      }
      const size_t end = text.find('"', i + 1);
      if (end == std::string_view::npos || end >= text.size() - 1) {
        simple = false;
        break;
      }
      out.emplace_back(text.substr(i + 1, end - i - 1));
      i = end + 1;
      if (text[i] == ',') {
        ++i;
      } else if (i != text.size() - 1) {
        simple = false;
        break;
      }
    }
    if (simple) return out;
    out.clear();
  }
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_array()) return Status::Internal(fmt::format("not a JSON array of strings: {}", text));
  for (const auto& v : j) {
    if (!v.is_string()) {
      return Status::Internal(fmt::format("not a JSON array of strings: {}", text));
    }
    out.push_back(v.get<std::string>());
  }
  return out;
}

Result<std::vector<AttemptError>> ParseErrors(std::string_view text) {
  std::vector<AttemptError> out;
  if (text == "[]") return out;
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_array()) {
    return Status::Internal(fmt::format("job errors are not a JSON array: {}", text));
  }
  for (const auto& e : j) {
    if (!e.is_object()) continue;
    AttemptError err;
    if (auto it = e.find("at"); it != e.end() && it->is_number_integer()) {
      err.at = TimePoint(Duration(it->get<int64_t>()));
    }
    if (auto it = e.find("attempt"); it != e.end() && it->is_number_integer()) {
      err.attempt = it->get<int>();
    }
    if (auto it = e.find("error"); it != e.end() && it->is_string()) {
      err.error = it->get<std::string>();
    }
    if (auto it = e.find("trace"); it != e.end() && it->is_string()) {
      err.trace = it->get<std::string>();
    }
    out.push_back(std::move(err));
  }
  return out;
}

std::string ErrorJson(const AttemptError& e) {
  nlohmann::json j = {{"at", e.at.time_since_epoch().count()},
                      {"attempt", e.attempt},
                      {"error", e.error},
                      {"trace", e.trace}};
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace spool::internal
