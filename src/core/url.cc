// Showing database URLs without their secrets.
#include "core/url.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <string>
#include <string_view>

#include "spool/client.h"

namespace spool {
namespace {

bool IsPostgresUrl(std::string_view url) {
  return url.starts_with("postgres://") || url.starts_with("postgresql://");
}

// Where the authority (user info, host, port) of a url starts, after "://", and where it ends:
// at the first '/', '?' or '#' (RFC 3986), which libpq follows too.
size_t AuthorityStart(std::string_view url) { return url.find("://") + 3; }
size_t AuthorityEnd(std::string_view url) {
  return std::min(url.find_first_of("/?#", AuthorityStart(url)), url.size());
}

// An '@' other than the one between user info and host: a second one in the authority (libpq
// takes the first as the separator, so the rest of the password became the host) or one past it
// (a user or password holding an unencoded '/', '?', '#' or '@').
bool HasStrayAt(std::string_view url) {
  const size_t last_at = url.rfind('@');
  if (last_at == std::string_view::npos) return false;
  return last_at >= AuthorityEnd(url) || url.find('@', AuthorityStart(url)) != last_at;
}

// A query parameter that holds a secret, as libpq reads its name: percent-decoded first
// ("pass%77ord" is "password").
bool IsSecretParam(std::string_view param) {
  const std::string_view name = param.substr(0, param.find('='));
  std::string decoded;
  for (size_t i = 0; i < name.size(); ++i) {
    if (name[i] == '%' && i + 2 < name.size() &&
        std::isxdigit(static_cast<unsigned char>(name[i + 1])) != 0 &&
        std::isxdigit(static_cast<unsigned char>(name[i + 2])) != 0) {
      decoded += static_cast<char>(std::stoi(std::string(name.substr(i + 1, 2)), nullptr, 16));
      i += 2;
    } else {
      decoded += name[i];
    }
  }
  return decoded == "password" || decoded == "sslpassword";
}

}  // namespace

std::string UrlWithoutPassword(std::string_view database_url) {
  std::string out(database_url);
  // Only PostgreSQL URLs carry credentials; a SQLite path may hold ':', '@' or '?' as they are.
  if (!IsPostgresUrl(out)) return out;
  const size_t authority = AuthorityStart(out);
  if (HasStrayAt(out)) {
    // Where the password ends cannot be told (nor can libpq, which refuses or misreads such a
    // url): everything up to the last '@' goes.
    out = out.substr(0, authority) + "..." + out.substr(out.rfind('@'));
    // Nor where its parameters begin: none is shown.
    if (const size_t params = out.find_first_of("?&", authority); params != std::string::npos) {
      out = out.substr(0, params + 1) + "...";
    }
    return out;
  }
  if (const size_t at = out.rfind('@', AuthorityEnd(out));
      at != std::string::npos && at >= authority) {
    const size_t colon = out.find(':', authority);
    if (colon < at) out.erase(colon, at - colon);
  }
  // Query parameters: drop password=... and sslpassword=... wherever they stand.
  const size_t query = out.find('?');
  if (query == std::string::npos) return out;
  std::string kept;
  size_t start = query + 1;
  while (start <= out.size()) {
    size_t end = out.find('&', start);
    if (end == std::string::npos) end = out.size();
    const std::string param = out.substr(start, end - start);
    if (!param.empty() && !IsSecretParam(param)) {
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

namespace internal {

std::string ShellWord(std::string_view word) {
  const bool plain = !word.empty() && std::all_of(word.begin(), word.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 ||
           std::string_view("_@%+=:,./-").find(c) != std::string_view::npos;
  });
  if (plain) return std::string(word);
  std::string out = "'";
  for (char c : word) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

Status CheckPostgresUrlEncoding(std::string_view url) {
  if (!IsPostgresUrl(url) || !HasStrayAt(url)) return Status::Ok();
  return Status::InvalidArgument(fmt::format(
      "the PostgreSQL url {} cannot be split into user, password and host: a user name or "
      "password holding '@', '/', '?' or '#' must be percent-encoded (%40, %2F, %3F, %23), e.g. "
      "postgres://app:p%40ss@127.0.0.1:5432/db",
      UrlWithoutPassword(url)));
}

}  // namespace internal
}  // namespace spool
