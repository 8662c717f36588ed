#include "core/exception.h"

#include <cxxabi.h>
#include <fmt/format.h>

#include <cstdlib>
#include <exception>
#include <memory>
#include <typeinfo>

namespace spool::internal {
namespace {

std::string Demangle(const char* name) {
  int status = 0;
  std::unique_ptr<char, decltype(&std::free)> out(
      abi::__cxa_demangle(name, nullptr, nullptr, &status), &std::free);
  return status == 0 && out ? std::string(out.get()) : std::string(name);
}

}  // namespace

CaughtException DescribeCurrentException() {
  CaughtException out;
  try {
    throw;
  } catch (const std::exception& e) {
    out.type = Demangle(typeid(e).name());
    out.message = fmt::format("{} thrown: {}", out.type, e.what());
  } catch (...) {
    // Anything may be thrown (an int, a string literal): its type is all there is to tell.
    const std::type_info* ti = abi::__cxa_current_exception_type();
    out.type = ti != nullptr ? Demangle(ti->name()) : "unknown";
    out.message = fmt::format("non-standard exception thrown: {}", out.type);
  }
  return out;
}

}  // namespace spool::internal
