# SPDX-License-Identifier: MIT
# Runs PROGRAM with the ;-list ARGS, which must fail (non-zero exit or abort) with output matching EXPECT.
execute_process(COMMAND ${PROGRAM} ${ARGS} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc EQUAL 0)
  message(FATAL_ERROR "${PROGRAM} succeeded but was expected to fail")
endif()
if(NOT "${out}${err}" MATCHES "${EXPECT}")
  message(FATAL_ERROR "${PROGRAM} failed (${rc}) without the expected message '${EXPECT}':\n${out}${err}")
endif()
message(STATUS "failed as expected (${rc}): ${err}")
