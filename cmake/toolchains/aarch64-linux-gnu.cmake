# SPDX-License-Identifier: MIT
# Cross build for AArch64 Linux with Debian's g++-aarch64-linux-gnu; executables (tests, test
# discovery) run under qemu-user. Used by the `aarch64` preset.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
# The header-only packages (xsimd, doctest) come from the host: see host_header_packages.cmake.
set(CMAKE_PROJECT_qift_INCLUDE ${CMAKE_CURRENT_LIST_DIR}/host_header_packages.cmake)
