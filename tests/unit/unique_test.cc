#include "core/unique.h"

#include <gtest/gtest.h>

#include "core/sha256.h"

namespace spool::internal {
namespace {

using namespace std::chrono_literals;

TEST(Sha256Test, KnownVectors) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(Sha256Hex(std::string(1'000'000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // 55 and 56 bytes straddle the padding boundary.
  EXPECT_NE(Sha256Hex(std::string(55, 'x')), Sha256Hex(std::string(56, 'x')));
}

TimePoint At(int64_t s) { return TimePoint(std::chrono::seconds(s)); }

std::string Key(std::string_view kind, std::string_view args, std::string_view queue, TimePoint t,
                const UniqueOptions& o) {
  auto k = ComputeUniqueKey(kind, args, queue, t, o);
  EXPECT_TRUE(k.has_value()) << k.error().ToString();
  return k ? k->key : std::string();
}

TEST(UniqueKeyTest, NotUniqueWithoutOptions) {
  auto k = ComputeUniqueKey("a", "{}", "q", At(0), std::nullopt);
  ASSERT_TRUE(k.has_value());
  EXPECT_TRUE(k->key.empty());
}

TEST(UniqueKeyTest, ByArgsIgnoresKeyOrderAndCanPickFields) {
  UniqueOptions o{.by_args = true};
  EXPECT_EQ(Key("k", R"({"a":1,"b":2})", "q", At(0), o),
            Key("k", R"({"b":2, "a":1})", "q", At(5), o));
  EXPECT_NE(Key("k", R"({"a":1})", "q", At(0), o), Key("k", R"({"a":2})", "q", At(0), o));
  EXPECT_NE(Key("k", R"({"a":1})", "q", At(0), o), Key("other", R"({"a":1})", "q", At(0), o));
  o.by_args_fields = {"a"};
  EXPECT_EQ(Key("k", R"({"a":1,"b":2})", "q", At(0), o),
            Key("k", R"({"a":1,"b":3})", "q", At(0), o));
  EXPECT_EQ(Key("k", R"({"a":1})", "q1", At(0), o), Key("k", R"({"a":1})", "q2", At(0), o))
      << "queue not in key";
  o.by_queue = true;
  EXPECT_NE(Key("k", R"({"a":1})", "q1", At(0), o), Key("k", R"({"a":1})", "q2", At(0), o));
}

TEST(UniqueKeyTest, AFieldTheArgsLackIsRefusedNamingIt) {
  // A misspelt field would give every job of the kind the same key.
  UniqueOptions o{.by_args = true, .by_args_fields = {"user_id", "acount"}};
  auto k = ComputeUniqueKey("sync", R"({"user_id":1,"account":2})", "q", At(0), o);
  ASSERT_FALSE(k.has_value());
  EXPECT_TRUE(k.error().IsInvalidArgument());
  EXPECT_EQ(k.error().message(),
            "UniqueOptions.by_args_fields names \"acount\", which the args of kind \"sync\" do not "
            "have: use the field's name as it appears in the args' JSON");
  // A field that is there with a null value is a value like any other.
  o.by_args_fields = {"user_id"};
  EXPECT_TRUE(ComputeUniqueKey("sync", R"({"user_id":null})", "q", At(0), o).has_value());
}

TEST(UniqueKeyTest, ByPeriodBucketsScheduledAt) {
  UniqueOptions o{.by_period = 1h};
  EXPECT_EQ(Key("k", "{}", "q", At(3600), o), Key("k", "{}", "q", At(7199), o));
  EXPECT_NE(Key("k", "{}", "q", At(7199), o), Key("k", "{}", "q", At(7200), o));
  EXPECT_EQ(Key("k", "{}", "q", At(-1), o), Key("k", "{}", "q", At(-3600), o));
  EXPECT_NE(Key("k", "{}", "q", At(-3600), o), Key("k", "{}", "q", At(-3601), o));
  // A period as long as a Duration holds ("one per kind, ever"): every time before 1970 is in
  // one period, every time after in the next (the floor once overflowed: UBSan saw it).
  UniqueOptions forever{.by_period = Duration::max()};
  EXPECT_EQ(Key("k", "{}", "q", At(-1), forever), Key("k", "{}", "q", At(-86400 * 365), forever));
  EXPECT_EQ(Key("k", "{}", "q", At(0), forever), Key("k", "{}", "q", At(86400 * 365), forever));
  EXPECT_NE(Key("k", "{}", "q", At(-1), forever), Key("k", "{}", "q", At(0), forever));
}

TEST(UniqueKeyTest, StatesDefaultToNonFinalAndMustIncludeThem) {
  auto k = ComputeUniqueKey("k", "{}", "q", At(0), UniqueOptions{});
  ASSERT_TRUE(k.has_value());
  EXPECT_EQ(k->states, UniqueStateBit(JobState::kAvailable) | UniqueStateBit(JobState::kPending) |
                           UniqueStateBit(JobState::kRunning) |
                           UniqueStateBit(JobState::kRetryable) |
                           UniqueStateBit(JobState::kScheduled));
  EXPECT_EQ(k->key.size(), 32u);
  EXPECT_EQ(InternalUniqueKey("x").states, 0xFF);
  EXPECT_NE(InternalUniqueKey("x").key, InternalUniqueKey("y").key);
  UniqueOptions bad{.by_states = {JobState::kAvailable}};
  auto e = ComputeUniqueKey("k", "{}", "q", At(0), bad);
  ASSERT_FALSE(e.has_value());
  EXPECT_NE(e.error().message().find("lacks \"pending\""), std::string::npos);
  UniqueOptions fields_without_args{.by_args_fields = {"a"}};
  EXPECT_FALSE(ComputeUniqueKey("k", "{}", "q", At(0), fields_without_args).has_value());
}

}  // namespace
}  // namespace spool::internal
