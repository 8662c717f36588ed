#pragma once

// Everything an application needs: the client, workers, options and results.
#include "spool/client.h"   // IWYU pragma: export
#include "spool/clock.h"    // IWYU pragma: export
#include "spool/job.h"      // IWYU pragma: export
#include "spool/options.h"  // IWYU pragma: export
#include "spool/result.h"   // IWYU pragma: export
#include "spool/status.h"   // IWYU pragma: export
#include "spool/worker.h"   // IWYU pragma: export
