include(CMakePackageConfigHelpers)

install(TARGETS spool EXPORT spoolTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY include/spool DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT spoolTargets NAMESPACE spool:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/spool)

configure_package_config_file(cmake/spoolConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/spoolConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/spool)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/spoolConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMajorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/spoolConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/spoolConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/spool)

if(SPOOL_BUILD_CLI)
  install(TARGETS spool_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
