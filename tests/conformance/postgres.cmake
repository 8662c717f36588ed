# PostgreSQL tests: the conformance suite against PostgreSQL, and PostgreSQL-only integration
# tests, on a throwaway cluster that scripts/pg-cluster.sh starts and stops as a CTest fixture.
# Included from tests/conformance/CMakeLists.txt. SPOOL_TEST_DATABASE_URL overrides the cluster's
# URL; without either the tests skip, and with SPOOL_REQUIRE_POSTGRES=1 (CI) they fail instead.
if(NOT SPOOL_WITH_POSTGRES)
  return()
endif()

set(SPOOL_PG_CLUSTER_DIR ${CMAKE_BINARY_DIR}/pg-cluster)

add_test(NAME pg_cluster_start
  COMMAND ${PROJECT_SOURCE_DIR}/scripts/pg-cluster.sh start ${SPOOL_PG_CLUSTER_DIR})
set_tests_properties(pg_cluster_start PROPERTIES
  FIXTURES_SETUP postgres LABELS "integration;postgres;conformance" TIMEOUT 120)
add_test(NAME pg_cluster_stop
  COMMAND ${PROJECT_SOURCE_DIR}/scripts/pg-cluster.sh stop ${SPOOL_PG_CLUSTER_DIR})
set_tests_properties(pg_cluster_stop PROPERTIES
  FIXTURES_CLEANUP postgres LABELS "integration;postgres;conformance" TIMEOUT 60)

# Per-test schemas on the cluster; shared by both binaries below.
add_library(spool_pg_test_support STATIC ${PROJECT_SOURCE_DIR}/tests/integration/postgres_test_db.cc)
target_link_libraries(spool_pg_test_support
  PUBLIC spool_test_support PostgreSQL::PostgreSQL PRIVATE spool_warnings)
target_compile_definitions(spool_pg_test_support
  PRIVATE SPOOL_PG_URL_FILE="${SPOOL_PG_CLUSTER_DIR}/url")

# One label only: gtest_discover_tests flattens a label list into separate properties. Labelled
# integration (it needs a server), so `ctest -L conformance` stays runnable without one.
spool_add_test(NAME spool_conformance_postgres_tests LABEL conformance-postgres-integration TIMEOUT 120
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/driver_conformance_test.cc
          ${CMAKE_CURRENT_LIST_DIR}/postgres_instance.cc
  LIBS spool_pg_test_support nlohmann_json::nlohmann_json
  PROPERTIES FIXTURES_REQUIRED postgres)
target_compile_definitions(spool_conformance_postgres_tests PRIVATE SPOOL_PG_CONFORMANCE=1)

file(GLOB spool_pg_integration_sources CONFIGURE_DEPENDS
  ${PROJECT_SOURCE_DIR}/tests/integration/postgres_*_test.cc)
if(spool_pg_integration_sources)
  spool_add_test(NAME spool_postgres_integration_tests LABEL integration-postgres TIMEOUT 120
    SOURCES ${spool_pg_integration_sources}
    LIBS spool_pg_test_support
    PROPERTIES FIXTURES_REQUIRED postgres)
endif()

add_test(NAME baseline_postgres
  COMMAND sh -c "exec \"$0\" postgres \"$(cat \"$1\")\" 1000"
    ${PROJECT_SOURCE_DIR}/scripts/baseline.sh ${SPOOL_PG_CLUSTER_DIR}/url)
set_tests_properties(baseline_postgres PROPERTIES
  FIXTURES_REQUIRED postgres LABELS benchmark-tools TIMEOUT 60
  PASS_REGULAR_EXPRESSION "\"jobs_per_sec\":[1-9]")
