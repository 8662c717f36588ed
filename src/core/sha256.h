#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace spool::internal {

// SHA-256 (FIPS 180-4) of `data`. Used for unique-job keys, where a collision would make two
// different jobs look like duplicates, so a short hash will not do.
std::array<uint8_t, 32> Sha256(std::string_view data);
std::string Sha256Hex(std::string_view data);

}  // namespace spool::internal
