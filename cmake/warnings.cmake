# Warnings as an INTERFACE target linked PRIVATE, so consumers never inherit spool's flags.
add_library(spool_warnings INTERFACE)
target_compile_options(spool_warnings INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wsign-conversion -Wold-style-cast
  -Wnon-virtual-dtor -Wsuggest-override -Wformat=2 -Wimplicit-fallthrough)
if(SPOOL_WERROR)
  target_compile_options(spool_warnings INTERFACE -Werror)
endif()
