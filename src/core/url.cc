// Showing database URLs without their secrets.
#include <string>
#include <string_view>

#include "spool/client.h"

namespace spool {

std::string UrlWithoutPassword(std::string_view database_url) {
  std::string out(database_url);
  // Only PostgreSQL URLs carry credentials; a SQLite path may hold ':', '@' or '?' as they are.
  if (!out.starts_with("postgres://") && !out.starts_with("postgresql://")) return out;
  {
    const size_t authority = out.find("://") + 3;
    const size_t authority_end = out.find_first_of("/?", authority);
    const size_t at =
        out.rfind('@', authority_end == std::string::npos ? out.size() : authority_end);
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

}  // namespace spool
