# SPDX-License-Identifier: MIT
# Runs PROGRAM with the ;-list ARGS, which must fail (non-zero exit or abort) with output matching EXPECT
# (stdout and stderr together, or stderr alone when STDERR_ONLY is true). EMULATOR (optional, a
# ;-list) runs a cross-compiled PROGRAM.
execute_process(COMMAND ${EMULATOR} ${PROGRAM} ${ARGS} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc EQUAL 0)
  message(FATAL_ERROR "${PROGRAM} succeeded but was expected to fail")
endif()
set(seen "${out}${err}")
if(STDERR_ONLY)
  set(seen "${err}")
endif()
if(NOT "${seen}" MATCHES "${EXPECT}")
  message(FATAL_ERROR "${PROGRAM} failed (${rc}) without the expected message '${EXPECT}':\n${out}${err}")
endif()
message(STATUS "failed as expected (${rc}): ${err}")
