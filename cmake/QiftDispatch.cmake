# SPDX-License-Identifier: MIT
# Run-time instruction-set dispatch for applications of qift (see include/qift/dispatch.hpp):
#
#   qift_add_dispatch_sources(<target> SOURCES <file.cpp>... [TARGETS <name>...])
#
# compiles each source once per x86-64 target (names: baseline avx2 avx512 avx512_vnni; default
# all four) with that target's flags, QIFT_DISPATCH_TARGET=<name> and QIFT_DISPATCH_TARGETS=<the
# set as a bit mask>, and adds the objects to <target>: in ascending target order, the baseline
# first, and before the target's own sources, so that the linker keeps the lowest target's copy
# of every inline function outside qift (the COMDAT caveat of dispatch.hpp). Each copy is a
# generated one-line source in the build tree that #includes the original, so it gets all of
# <target>'s include directories, definitions, options and usage requirements (link <target> to
# qift::qift as usual), followed by the per-target flags, which override any earlier -march
# (-march=native included). <target>'s own sources must be compiled for the baseline: set no
# -march beyond x86-64 on it (its objects' inline functions count in the COMDAT choice too).
# Calling it again on the same target adds sources (each call may list other TARGETS; the
# selectors of a call's functions see that call's set) and keeps every copy in target order.
#
# On other processors, or with a compiler other than GCC or clang, the sources are added once
# with <target>'s own flags: the compile-time path, where the dispatch macros define one instance
# and its selector.
#
#   qift_dispatch_baseline_options(<new> <from>)
#
# creates the INTERFACE target <new>: the compile and link options of the INTERFACE target <from>
# without its -march=..., then the baseline flags (x86) and qift::qift; for the own sources of a
# dispatch target when a project's option target carries -march=native (as qift's own does).
#
# Also defined: QIFT_DISPATCH_X86 (ON where dispatch is built), QIFT_DISPATCH_ALL_TARGETS, and
# QIFT_DISPATCH_FLAGS_<name>, the flags of each target as a list (the same strings as
# qift::target_flags).
include_guard(GLOBAL)

set(QIFT_DISPATCH_ALL_TARGETS baseline avx2 avx512 avx512_vnni)
set(QIFT_DISPATCH_FLAGS_baseline -march=x86-64)
set(QIFT_DISPATCH_FLAGS_avx2 -march=x86-64-v3)
set(QIFT_DISPATCH_FLAGS_avx512 -march=x86-64-v4)
set(QIFT_DISPATCH_FLAGS_avx512_vnni -march=x86-64-v4 -mavx512vnni -mavx512vbmi)

if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64|x64)$"
   AND CMAKE_SIZEOF_VOID_P EQUAL 8
   AND CMAKE_CXX_COMPILER_ID MATCHES "^(GNU|Clang|AppleClang)$")
  set(QIFT_DISPATCH_X86 ON)
else()
  set(QIFT_DISPATCH_X86 OFF)
endif()

function(qift_add_dispatch_sources target)
  cmake_parse_arguments(PARSE_ARGV 1 ARG "" "" "SOURCES;TARGETS")
  if(NOT TARGET ${target})
    message(FATAL_ERROR "qift_add_dispatch_sources: ${target} is not a target")
  endif()
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "qift_add_dispatch_sources(${target}): no SOURCES")
  endif()
  if(ARG_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "qift_add_dispatch_sources(${target}): unexpected arguments "
                        "${ARG_UNPARSED_ARGUMENTS} (expected SOURCES ... [TARGETS ...])")
  endif()
  if(NOT ARG_TARGETS)
    set(ARG_TARGETS ${QIFT_DISPATCH_ALL_TARGETS})
  endif()
  foreach(t ${ARG_TARGETS})
    if(NOT t IN_LIST QIFT_DISPATCH_ALL_TARGETS)
      message(FATAL_ERROR "qift_add_dispatch_sources(${target}): unknown target '${t}'; valid: "
                          "${QIFT_DISPATCH_ALL_TARGETS}")
    endif()
  endforeach()

  set(sources "")
  foreach(src ${ARG_SOURCES})
    get_filename_component(abs ${src} ABSOLUTE BASE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
    list(APPEND sources ${abs})
  endforeach()

  if(NOT QIFT_DISPATCH_X86)
    target_sources(${target} PRIVATE ${sources})
    return()
  endif()

  # The set as a bit mask (bit i: the i-th of QIFT_DISPATCH_ALL_TARGETS), and the targets in
  # ascending order whatever order TARGETS lists them in.
  set(mask 0)
  set(ordered "")
  set(bit 1)
  foreach(t ${QIFT_DISPATCH_ALL_TARGETS})
    if(t IN_LIST ARG_TARGETS)
      math(EXPR mask "${mask} | ${bit}")
      list(APPEND ordered ${t})
    endif()
    math(EXPR bit "${bit} * 2")
  endforeach()

  # A -march on the target itself would compile its own sources (and their inline functions,
  # which the linker may keep for every copy) beyond the baseline.
  get_target_property(own_options ${target} COMPILE_OPTIONS)
  if(own_options AND "${own_options}" MATCHES "-march=|-mavx")
    message(WARNING "qift_add_dispatch_sources(${target}): the target's own COMPILE_OPTIONS "
                    "(${own_options}) set an instruction set; its own sources must be compiled "
                    "for the baseline (see cmake/QiftDispatch.cmake)")
  endif()

  # One generated copy per (target, source), numbered per target so that a second call on the
  # same target adds files instead of replacing them; remembered per target level
  # (QIFT_DISPATCH_COPIES_<name>) for the ordering below.
  foreach(t ${ordered})
    get_property(previous TARGET ${target} PROPERTY QIFT_DISPATCH_COPIES_${t})
    list(LENGTH previous index)
    foreach(abs ${sources})
      get_filename_component(name ${abs} NAME_WE)
      get_filename_component(ext ${abs} LAST_EXT)
      set(copy ${CMAKE_CURRENT_BINARY_DIR}/qift_dispatch/${target}/${t}/${index}_${name}${ext})
      file(CONFIGURE OUTPUT ${copy}
           CONTENT "// Generated by qift_add_dispatch_sources: ${abs} for the ${t} target.\n#include \"${abs}\"\n"
           @ONLY)
      set_source_files_properties(
        ${copy} TARGET_DIRECTORY ${target}
        PROPERTIES COMPILE_OPTIONS "${QIFT_DISPATCH_FLAGS_${t}}"
                   COMPILE_DEFINITIONS "QIFT_DISPATCH_TARGET=${t};QIFT_DISPATCH_TARGETS=${mask}")
      set_property(TARGET ${target} APPEND PROPERTY QIFT_DISPATCH_COPIES_${t} ${copy})
      math(EXPR index "${index} + 1")
    endforeach()
  endforeach()

  # Every copy of every call first, in ascending target order, then the target's own sources:
  # the link line lists objects in source order.
  set(copies "")
  foreach(t ${QIFT_DISPATCH_ALL_TARGETS})
    get_property(level TARGET ${target} PROPERTY QIFT_DISPATCH_COPIES_${t})
    list(APPEND copies ${level})
  endforeach()
  get_target_property(own_sources ${target} SOURCES)
  if(NOT own_sources)
    set(own_sources "")
  endif()
  if(copies)
    list(REMOVE_ITEM own_sources ${copies})
  endif()
  set_property(TARGET ${target} PROPERTY SOURCES ${copies} ${own_sources})
endfunction()

function(qift_dispatch_baseline_options new from)
  add_library(${new} INTERFACE)
  get_target_property(options ${from} INTERFACE_COMPILE_OPTIONS)
  if(options)
    list(FILTER options EXCLUDE REGEX "^-march=")
    target_compile_options(${new} INTERFACE ${options})
  endif()
  get_target_property(link_options ${from} INTERFACE_LINK_OPTIONS)
  if(link_options)
    target_link_options(${new} INTERFACE ${link_options})
  endif()
  if(QIFT_DISPATCH_X86)
    target_compile_options(${new} INTERFACE ${QIFT_DISPATCH_FLAGS_baseline})
  endif()
  target_link_libraries(${new} INTERFACE qift::qift)
endfunction()
