# SPDX-License-Identifier: MIT
# Runs NM -C on PROGRAM and fails unless each of the ;-list NAMESPACES prefixes some symbol.
execute_process(COMMAND ${NM} -C ${PROGRAM} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${NM} -C ${PROGRAM} failed (${rc}): ${err}")
endif()
foreach(ns ${NAMESPACES})
  string(REGEX MATCHALL "[^\n]*${ns}[^\n]*" hits "${out}")
  list(LENGTH hits count)
  if(count EQUAL 0)
    message(FATAL_ERROR "no symbol of ${ns} in ${PROGRAM}")
  endif()
  message(STATUS "${count} symbols of ${ns}")
endforeach()
