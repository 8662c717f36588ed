#include "driver/postgres/pg_conn.h"

#include <fmt/format.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/url.h"
#include "spool/client.h"

namespace spool::internal::pg {
namespace {

// How long a connection attempt may take unless the url (connect_timeout=) or PGCONNECT_TIMEOUT
// says otherwise.
constexpr const char* kDefaultConnectTimeoutSeconds = "10";

// One line: libpq's messages end in newlines and continue on tab-indented lines, which become
// "; " so that "Connection refused" and "Is the server running ...?" stay two sentences.
std::string TrimMessage(const char* msg) {
  std::string s;
  bool line_break = false;
  for (const char* p = msg ? msg : ""; *p != '\0'; ++p) {
    if (*p == '\n') {
      line_break = true;
    } else if (*p == '\t' || *p == ' ') {
      if (!s.empty() && s.back() != ' ' && !line_break) s += ' ';
    } else {
      if (line_break && !s.empty()) s += "; ";
      line_break = false;
      s += *p;
    }
  }
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

// libpq's complaint about a url it cannot parse, without the url it quotes (`in URI: "..."`) or
// any fragment of it (`after "..."`, `invalid percent-encoded token: "..."`): any may hold the
// password.
std::string UnparseableUrlText(const char* err) {
  std::string text = TrimMessage(err);
  for (std::string_view cut : {" in URI:", " in connection info string"}) {
    if (const size_t at = text.find(cut); at != std::string::npos) text.erase(at);
  }
  // A quoted single punctuation mark (`matching "]" in IPv6 host address`) is libpq's own word,
  // not the url's, and is kept; any other quoted fragment becomes "...".
  std::string kept;
  size_t i = 0;
  while (i < text.size()) {
    if (text[i] != '"') {
      kept += text[i++];
      continue;
    }
    const size_t close = text.find('"', i + 1);
    if (close == std::string::npos) break;  // an unclosed quote: drop the rest
    const std::string_view inside(text.data() + i + 1, close - i - 1);
    const bool mark =
        inside.size() == 1 && std::string_view("[]/@?=:&#").find(inside[0]) != std::string::npos;
    kept += mark ? fmt::format("\"{}\"", inside) : std::string("\"...\"");
    i = close + 1;
  }
  while (!kept.empty() && (kept.back() == ' ' || kept.back() == ':')) kept.pop_back();
  return kept.empty() ? "libpq could not parse it" : kept;
}

// libpq prints "connection to server at "127.0.0.1", port 1 failed: ..." which names host and
// port already, but never the password: it is safe to pass through.
std::string ConnErrorText(PGconn* conn) { return TrimMessage(PQerrorMessage(conn)); }

// What to fix when the server refused the connection for a reason no retry can change: the url
// names a user, password or database it does not accept. libpq keeps no SQLSTATE of a failed
// connection, so its own flag and the server's words (English unless the server's lc_messages
// says otherwise) tell; empty for anything else, which stays ConnectionLost.
std::string RefusalHint(PGconn* conn, std::string_view text) {
  const auto has = [&](std::string_view part) { return text.find(part) != std::string::npos; };
  if (PQconnectionNeedsPassword(conn) != 0) {
    return "the server asks for a password: put it in the url as user:password@host, "
           "in PGPASSWORD or in ~/.pgpass";
  }
  if (has("password authentication failed")) {
    return "check the user and password in the url, PGPASSWORD or ~/.pgpass";
  }
  if (has("database \"") && has("does not exist")) {
    return "create the database (createdb NAME) or fix its name in the url";
  }
  if (has("role \"") && has("does not exist")) {
    return "create the role or fix the user name in the url";
  }
  if (has("is not permitted to log in")) return "ALTER ROLE ... LOGIN, or connect as another user";
  if (has("no pg_hba.conf entry")) {
    return "the server's pg_hba.conf has no line for this host, user and database: add one, or "
           "connect as another user";
  }
  return {};
}

}  // namespace

std::string DescribeTarget(const std::string& url) {
  PQconninfoOption* opts = PQconninfoParse(url.c_str(), nullptr);
  if (opts == nullptr) return "a PostgreSQL url that cannot be parsed";
  std::string host, hostaddr, port;
  for (PQconninfoOption* o = opts; o->keyword != nullptr; ++o) {
    if (o->val == nullptr) continue;
    if (std::strcmp(o->keyword, "host") == 0) host = o->val;
    if (std::strcmp(o->keyword, "hostaddr") == 0) hostaddr = o->val;
    if (std::strcmp(o->keyword, "port") == 0) port = o->val;
  }
  PQconninfoFree(opts);
  if (host.empty()) host = hostaddr;
  if (host.empty()) host = "localhost";
  if (port.empty()) port = "5432";
  if (host.starts_with("/")) return fmt::format("socket {}/.s.PGSQL.{}", host, port);
  // An IPv6 address in brackets, as in a URL: "::1:5432" reads as an address with no port.
  if (host.find(':') != std::string::npos) return fmt::format("[{}]:{}", host, port);
  return fmt::format("{}:{}", host, port);
}

Status::Code ClassifySqlState(std::string_view s) {
  using Code = Status::Code;
  if (s.size() != 5) return Code::kInternal;
  if (s == "40001" || s == "40P01" || s == "55P03" || s == "57014") return Code::kRetryable;
  if (s.starts_with("08") || s == "57P01" || s == "57P02" || s == "57P03") {
    return Code::kConnectionLost;
  }
  if (s == "23505") return Code::kAlreadyExists;
  // Data the statement cannot take, or a value past a limit (54000: a jsonb array too large).
  if (s.starts_with("23") || s.starts_with("22") || s.starts_with("54")) {
    return Code::kInvalidArgument;
  }
  // Undefined table or column: the schema is missing or older than this build.
  if (s == "42P01" || s == "42703") return Code::kFailedPrecondition;
  return Code::kInternal;
}

Result<std::unique_ptr<Conn>> Conn::Connect(const std::string& url, const std::string& target) {
  SPOOL_RETURN_IF_ERROR(CheckPostgresUrlEncoding(url));
  {
    // Parsed first so that a url libpq refuses is reported without libpq's echo of it.
    char* err = nullptr;
    PQconninfoOption* opts = PQconninfoParse(url.c_str(), &err);
    if (opts == nullptr) {
      const std::string why = UnparseableUrlText(err);
      if (err != nullptr) PQfreemem(err);
      return Status::InvalidArgument(fmt::format(
          "the PostgreSQL url {} cannot be parsed: {} (postgres://user:password@host:port/db)",
          UrlWithoutPassword(url), why));
    }
    PQconninfoFree(opts);
  }
  // connect_timeout: libpq waits forever by default for a server that accepts the connection and
  // never answers, which hung every command and an app's start (unstoppable while it waited).
  // Before dbname, so that a url's connect_timeout overrides it; PGCONNECT_TIMEOUT is libpq's
  // own default, so it is left to apply when set.
  // fallback_application_name: pg_stat_activity names spool's sessions "spool" unless the url
  // sets application_name.
  std::vector<const char*> keywords, values;
  if (const char* env = std::getenv("PGCONNECT_TIMEOUT"); env == nullptr || *env == '\0') {
    keywords.push_back("connect_timeout");
    values.push_back(kDefaultConnectTimeoutSeconds);
  }
  keywords.insert(keywords.end(), {"dbname", "fallback_application_name", nullptr});
  values.insert(values.end(), {url.c_str(), "spool", nullptr});
  PGconn* raw = PQconnectdbParams(keywords.data(), values.data(), /*expand_dbname=*/1);
  if (raw == nullptr) {
    return Status::ConnectionLost(
        fmt::format("cannot connect to PostgreSQL at {}: out of memory", target));
  }
  std::unique_ptr<Conn> conn(new Conn(raw, true));
  // libpq prints NOTICEs (e.g. "table does not exist, skipping") to stderr by default; a library
  // must not write to the application's stderr.
  PQsetNoticeProcessor(
      raw, [](void*, const char*) {}, nullptr);
  if (PQstatus(raw) != CONNECTION_OK) {
    const std::string text = ConnErrorText(raw);
    // A value libpq cannot use (port=abc, sslmode=bogus): the url is wrong, and no retry helps.
    const auto has = [&](std::string_view part) { return text.find(part) != std::string::npos; };
    if (has("for connection option") ||
        (has("invalid ") && (has(" value: ") || has("invalid port number")))) {
      return Status::InvalidArgument(
          fmt::format("the PostgreSQL url {} has a value libpq cannot use: {} "
                      "(postgres://user:password@host:port/db?option=value)",
                      UrlWithoutPassword(url), text));
    }
    if (const std::string hint = RefusalHint(raw, text); !hint.empty()) {
      return Status::InvalidArgument(
          fmt::format("PostgreSQL at {} refused the connection: {} ({})", target, text, hint));
    }
    return Status::ConnectionLost(
        fmt::format("cannot connect to PostgreSQL at {}: {}", target, text));
  }
  conn->cancel_.reset(PQgetCancel(raw));
  return conn;
}

void Conn::CancelStatement() const {
  if (!cancel_) return;
  char error[256];
  (void)PQcancel(cancel_.get(), error, sizeof error);
}

std::unique_ptr<Conn> Conn::Borrow(PGconn* conn) {
  return std::unique_ptr<Conn>(new Conn(conn, false));
}

Conn::~Conn() {
  if (owned_ && conn_ != nullptr) PQfinish(conn_);
}

Status Conn::ErrorFrom(const PGresult* res, std::string_view what) const {
  const char* state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;
  // The primary message and detail, without the "ERROR:" prefix and the echoed SQL of the
  // verbose form.
  std::string msg = TrimMessage(res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : nullptr);
  if (const char* detail = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL) : nullptr) {
    msg += fmt::format(" ({})", TrimMessage(detail));
  }
  if (msg.empty()) msg = ConnErrorText(conn_);
  if (state == nullptr || PQstatus(conn_) != CONNECTION_OK) {
    // No SQLSTATE or a dead connection: the network or server went away.
    if (PQstatus(conn_) != CONNECTION_OK) {
      return Status(Status::Code::kConnectionLost,
                    fmt::format("{}: connection to PostgreSQL lost: {}", what, msg),
                    state ? state : "08006");
    }
    return Status(Status::Code::kInternal, fmt::format("{}: {}", what, msg));
  }
  Status::Code code = ClassifySqlState(state);
  if (code == Status::Code::kFailedPrecondition) {
    msg += " (is spool's schema migrated? run: spool migration up)";
  } else if (std::string_view(state) == "3F000") {
    // No schema of the search_path exists: the url's options=-csearch_path names a new one.
    msg +=
        " (create the schema that the url's search_path names first, e.g. CREATE SCHEMA "
        "name, or correct the name)";
  }
  return Status(code, fmt::format("{}: {}", what, msg), state);
}

Status Conn::Exec(std::string_view sql) {
  PgResult res(PQexec(conn_, std::string(sql).c_str()));
  ExecStatusType st = res ? PQresultStatus(res.get()) : PGRES_FATAL_ERROR;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    return ErrorFrom(res.get(), "postgres");
  }
  return Status::Ok();
}

Result<int64_t> Conn::CopyIn(const std::string& copy_sql,
                             const std::function<bool(std::string&)>& fill) {
  PgResult start(PQexec(conn_, copy_sql.c_str()));
  if (!start || PQresultStatus(start.get()) != PGRES_COPY_IN) {
    return ErrorFrom(start.get(), "copy");
  }
  std::string buf;
  bool more = true;
  const char* failed = nullptr;  // why the copy is aborted, if it is
  while (more) {
    buf.clear();
    more = fill(buf);
    if (!buf.empty() && PQputCopyData(conn_, buf.data(), static_cast<int>(buf.size())) != 1) {
      failed = "sending rows failed";
      break;
    }
  }
  // Ends (or aborts) the copy; the server's verdict, or its error, comes as the next result, and
  // every result must be read for the connection to be usable again.
  if (PQputCopyEnd(conn_, failed) != 1) return ErrorFrom(nullptr, "copy");
  Status error = Status::Ok();
  int64_t rows = 0;
  while (PGresult* raw = PQgetResult(conn_)) {
    PgResult res(raw);
    if (PQresultStatus(raw) != PGRES_COMMAND_OK) {
      if (error.ok()) error = ErrorFrom(raw, "copy");
    } else {
      rows = std::strtoll(PQcmdTuples(raw), nullptr, 10);
    }
  }
  if (!error.ok()) return error;
  if (failed != nullptr) return ErrorFrom(nullptr, "copy");
  return rows;
}

namespace {

std::vector<const char*> ParamValues(const std::vector<Param>& params) {
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const Param& p : params) values.push_back(p ? p->c_str() : nullptr);
  return values;
}

std::string_view What(std::string_view name) { return name.empty() ? "postgres" : name; }

bool Succeeded(const PGresult* res) {
  const ExecStatusType st = res != nullptr ? PQresultStatus(res) : PGRES_FATAL_ERROR;
  return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

}  // namespace

Result<const std::string*> Conn::EnsurePrepared(std::string_view name, const std::string& sql,
                                                int n_params) {
  if (!owned_ || name.empty()) return nullptr;
  std::string key(name);
  auto it = prepared_.find(key);
  if (it == prepared_.end()) {
    PgResult prep(PQprepare(conn_, key.c_str(), sql.c_str(), n_params, nullptr));
    if (!prep || PQresultStatus(prep.get()) != PGRES_COMMAND_OK) {
      return ErrorFrom(prep.get(), name);
    }
    it = prepared_.insert(std::move(key)).first;
  }
  return &*it;
}

Result<PgResult> Conn::Query(std::string_view name, const std::string& sql,
                             const std::vector<Param>& params, Format results) {
  const std::vector<const char*> values = ParamValues(params);
  const int n = static_cast<int>(params.size());
  SPOOL_ASSIGN_OR_RETURN(const std::string* prepared, EnsurePrepared(name, sql, n));
  PgResult res(prepared != nullptr ? PQexecPrepared(conn_, prepared->c_str(), n, values.data(),
                                                    nullptr, nullptr, static_cast<int>(results))
                                   : PQexecParams(conn_, sql.c_str(), n, nullptr, values.data(),
                                                  nullptr, nullptr, static_cast<int>(results)));
  if (!Succeeded(res.get())) return ErrorFrom(res.get(), What(name));
  return res;
}

Result<std::vector<PgResult>> Conn::QueryPipelined(const std::vector<Statement>& statements) {
  // Preparing is a round trip of its own, but only the first time on a connection.
  std::vector<const std::string*> prepared;
  for (const Statement& s : statements) {
    SPOOL_ASSIGN_OR_RETURN(const std::string* p,
                           EnsurePrepared(s.name, *s.sql, static_cast<int>(s.params.size())));
    prepared.push_back(p);
  }
  if (PQenterPipelineMode(conn_) != 1) return ErrorFrom(nullptr, "pipeline");
  bool sent = true;
  for (size_t i = 0; i < statements.size() && sent; ++i) {
    const Statement& s = statements[i];
    const std::vector<const char*> values = ParamValues(s.params);
    const int n = static_cast<int>(s.params.size());
    const int format = static_cast<int>(s.results);
    sent =
        (prepared[i] != nullptr ? PQsendQueryPrepared(conn_, prepared[i]->c_str(), n, values.data(),
                                                      nullptr, nullptr, format)
                                : PQsendQueryParams(conn_, s.sql->c_str(), n, nullptr,
                                                    values.data(), nullptr, nullptr, format)) == 1;
  }
  if (sent) sent = PQpipelineSync(conn_) == 1;
  if (!sent) {
    // No Sync went out, so nothing of it commits; what is queued on the connection cannot be
    // taken back, so its pool drops it.
    broken_ = true;
    return ErrorFrom(nullptr, What(statements.empty() ? "" : statements[0].name));
  }
  // Every result up to the Sync must be read before the connection leaves pipeline mode.
  std::vector<PgResult> out;
  std::optional<Status> error;
  for (const Statement& s : statements) {
    PgResult res(PQgetResult(conn_));
    if (!res) {  // the connection failed, or the server's answers do not match what was sent
      broken_ = true;
      error = ErrorFrom(nullptr, What(s.name));
      break;
    }
    // A statement after a failed one comes back PGRES_PIPELINE_ABORTED: the first error counts.
    if (!Succeeded(res.get()) && !error) error = ErrorFrom(res.get(), What(s.name));
    out.push_back(std::move(res));
    while (PGresult* end = PQgetResult(conn_)) PQclear(end);  // the NULL ending its results
  }
  if (!broken_) {
    PgResult sync(PQgetResult(conn_));
    if (!sync || PQresultStatus(sync.get()) != PGRES_PIPELINE_SYNC) {
      if (!error) error = ErrorFrom(sync.get(), "pipeline");
    }
  }
  if (PQexitPipelineMode(conn_) != 1) {  // results left unread: no later call could use it
    broken_ = true;
    if (!error) error = ErrorFrom(nullptr, "pipeline");
  }
  if (error) return *error;
  return out;
}

namespace {
void AppendElement(std::string& out, std::string_view s) {
  out += '"';
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  out += '"';
}
}  // namespace

std::string ArrayLiteral(const std::vector<std::optional<std::string>>& items) {
  std::string out = "{";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ',';
    if (items[i]) {
      AppendElement(out, *items[i]);
    } else {
      out += "NULL";
    }
  }
  out += '}';
  return out;
}

std::string ArrayLiteral(const std::vector<std::string>& items) {
  std::string out = "{";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ',';
    AppendElement(out, items[i]);
  }
  out += '}';
  return out;
}

}  // namespace spool::internal::pg
