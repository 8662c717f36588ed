#pragma once

#include <memory>
#include <string>

#include "driver/driver.h"

namespace spool::internal {

// Opens the SQLite database file at `path` (created if missing; relative to the working
// directory unless absolute), in WAL mode with one writer connection shared by all executor work.
// Does not migrate. Begin() holds that writer until the Tx ends: the thread holding a Tx must not
// use executor(), Begin(), WaitForChange or the migration methods before ending it (they would
// wait for it forever; WaitForChange reads on the writer), and every Tx and ExecutorFor executor
// must be destroyed before the driver.
// WaitForChange reports commits by other connections (other processes, the caller's own
// connection, another driver) made since its previous call returned (the first call: since
// open); this driver's own writes are not reported. Interrupt() is sticky: it wakes the current
// wait or else the next one, which returns true.
// ConnectionLost naming the path if the file cannot be opened or created; InvalidArgument naming
// it if the file is not a SQLite database.
Result<std::unique_ptr<Driver>> OpenSqliteDriver(std::string path, const DriverOptions& options);

}  // namespace spool::internal
