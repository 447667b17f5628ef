# SPDX-License-Identifier: MIT
# Included right after project(qift) by the cross toolchain files. xsimd and doctest are
# header-only, so the cross build uses the host's copies; but their packages point at /usr/include,
# and the host's C library headers there must not reach the cross compiler. So only those two
# folders are staged (as links) and the targets are defined on the stage, before
# cmake/qift_xsimd.cmake and tests/ look for the packages (find_package then keeps these targets).
set(_qift_stage ${CMAKE_BINARY_DIR}/host-headers)
file(MAKE_DIRECTORY ${_qift_stage})
foreach(_qift_dir xsimd doctest)
  if(NOT EXISTS ${_qift_stage}/${_qift_dir})
    file(CREATE_LINK /usr/include/${_qift_dir} ${_qift_stage}/${_qift_dir} SYMBOLIC)
  endif()
endforeach()
add_library(xsimd INTERFACE IMPORTED)
set_target_properties(xsimd PROPERTIES INTERFACE_INCLUDE_DIRECTORIES ${_qift_stage})
add_library(doctest::doctest INTERFACE IMPORTED)
set_target_properties(doctest::doctest PROPERTIES INTERFACE_INCLUDE_DIRECTORIES ${_qift_stage})
# doctest's package adds its script folder (doctest_discover_tests) only when it defines the target.
list(APPEND CMAKE_MODULE_PATH /usr/lib/cmake/doctest)
unset(_qift_stage)
unset(_qift_dir)
