#pragma once

// RAII over libpq for the PostgreSQL driver. Only files under src/driver/postgres/ include this,
// and the CLI's app migrations, which connect as the driver does.

#include <libpq-fe.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "spool/result.h"
#include "spool/status.h"

namespace spool::internal::pg {

struct ResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using PgResult = std::unique_ptr<PGresult, ResultDeleter>;

struct ConnDeleter {
  void operator()(PGconn* c) const { PQfinish(c); }
};

// Where a URL points, for error messages: "host:port" (or the socket dir), never the password.
std::string DescribeTarget(const std::string& url);

// Maps a SQLSTATE to the code sorted by what the caller can do next.
Status::Code ClassifySqlState(std::string_view sqlstate);

// A text-format query parameter; nullopt is SQL NULL.
using Param = std::optional<std::string>;

// How the server sends a statement's result values. Binary spares the server the output
// functions (and the client the parsing) of timestamps, integers and arrays; see pg_binary.h.
enum class Format { kText = 0, kBinary = 1 };

// One statement of a pipeline: `sql` with text parameters, prepared under `name` on owned
// connections when the name is not empty (as Conn::Query does).
struct Statement {
  std::string_view name;
  const std::string* sql;  // outlives the call
  std::vector<Param> params;
  Format results = Format::kText;
};

// One connection, owned or borrowed (a caller's PGconn* inside its own transaction). Used by one
// thread at a time. Owned connections cache prepared statements by name.
class Conn {
 public:
  // Connects to `url`. Errors name `target` (host and port), never the password:
  // InvalidArgument if the server refused the url's user, password or database (no retry
  // helps), else ConnectionLost.
  static Result<std::unique_ptr<Conn>> Connect(const std::string& url, const std::string& target);
  // Wraps a caller's connection: never closed, never given prepared statements.
  static std::unique_ptr<Conn> Borrow(PGconn* conn);

  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;
  ~Conn();

  PGconn* get() const { return conn_; }
  bool owned() const { return owned_; }
  // False once the server or network dropped it; the pool discards such connections.
  bool ok() const { return !broken_ && PQstatus(conn_) == CONNECTION_OK; }
  // Asks the server to cancel the statement this connection runs, if any. Thread safe: for a
  // stop that must not wait for a stalled database while another thread waits in a query.
  void CancelStatement() const;

  // Runs one or more statements without parameters (DDL, BEGIN/COMMIT).
  Status Exec(std::string_view sql);
  // Runs `sql` with text parameters. With a non-empty `name` on an owned connection the statement
  // is prepared once per connection and reused.
  Result<PgResult> Query(std::string_view name, const std::string& sql,
                         const std::vector<Param>& params, Format results = Format::kText);

  // Runs `statements` in one round trip (libpq pipeline mode, one Sync). Outside a transaction
  // block they form one implicit transaction: all commit or none does. The first failure is
  // returned (the statements after it are skipped by the server); else one result per statement.
  Result<std::vector<PgResult>> QueryPipelined(const std::vector<Statement>& statements);

  // Runs `copy_sql` (a COPY ... FROM STDIN in text format) and sends what `fill` appends to the
  // buffer it is given, one piece per call, until `fill` returns false. Returns the rows copied.
  Result<int64_t> CopyIn(const std::string& copy_sql,
                         const std::function<bool(std::string&)>& fill);

  // The error of a failed command (or of the connection when `res` is null) as a Status.
  Status ErrorFrom(const PGresult* res, std::string_view what) const;

 private:
  Conn(PGconn* conn, bool owned) : conn_(conn), owned_(owned) {}
  // Prepares `name` once per owned connection and returns it (stable while the connection
  // lives); nullptr when the statement is to be sent unnamed.
  Result<const std::string*> EnsurePrepared(std::string_view name, const std::string& sql,
                                            int n_params);

  PGconn* conn_;
  bool owned_;
  bool broken_ = false;  // left in a state no later call can use (a pipeline half sent)
  // Made once after connecting: PQgetCancel reads the connection, which another thread uses.
  std::unique_ptr<PGcancel, void (*)(PGcancel*)> cancel_{nullptr, &PQfreeCancel};
  std::unordered_set<std::string> prepared_;
};

// Encodes strings as a PostgreSQL array literal: {"a","b\"c"}; nullopt elements become NULL.
std::string ArrayLiteral(const std::vector<std::optional<std::string>>& items);
std::string ArrayLiteral(const std::vector<std::string>& items);

}  // namespace spool::internal::pg
