// Showing database URLs without their secrets.
#include <algorithm>
#include <cctype>
#include <string>
#include <string_view>

#include "spool/client.h"

namespace spool {

std::string UrlWithoutPassword(std::string_view database_url) {
  std::string out(database_url);
  // Only PostgreSQL URLs carry credentials; a SQLite path may hold ':', '@' or '?' as they are.
  if (!out.starts_with("postgres://") && !out.starts_with("postgresql://")) return out;
  {
    // The last '@' before the query ends the user info even when an unencoded '/' in the
    // password would end the authority first: better a garbled url than a shown password.
    const size_t authority = out.find("://") + 3;
    const size_t at = out.rfind('@', std::min(out.find('?'), out.size()));
    if (at != std::string::npos && at >= authority) {
      const size_t colon = out.find(':', authority);
      if (colon < at) out.erase(colon, at - colon);
    }
  }
  // Query parameters: drop password=... wherever it stands.
  const size_t query = out.find('?');
  if (query == std::string::npos) return out;
  std::string kept;
  size_t start = query + 1;
  while (start <= out.size()) {
    size_t end = out.find('&', start);
    if (end == std::string::npos) end = out.size();
    const std::string param = out.substr(start, end - start);
    if (!param.empty() && param.rfind("password=", 0) != 0) {
      kept += (kept.empty() ? "" : "&") + param;
    }
    start = end + 1;
  }
  return out.substr(0, query) + (kept.empty() ? "" : "?" + kept);
}

std::string UrlSchemeForMessage(std::string_view database_url) {
  const size_t colon = database_url.find(':');
  const std::string_view scheme = database_url.substr(0, colon);
  const bool is_scheme =
      colon != std::string_view::npos && !scheme.empty() && scheme.size() <= 32 &&
      std::isalpha(static_cast<unsigned char>(scheme.front())) != 0 &&
      std::all_of(scheme.begin(), scheme.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '+' || c == '-' || c == '.';
      });
  return is_scheme ? "\"" + std::string(scheme) + ":...\"" : "(not a url)";
}

}  // namespace spool
