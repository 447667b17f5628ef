// SPDX-License-Identifier: MIT
// The doctest runner for the whole suite; test files are tests/test_<header>.cpp.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
