# SPDX-License-Identifier: MIT
# Builds and runs tests/consumer/project against qift, found either with find_package after
# `cmake --install` into a scratch prefix, or with add_subdirectory.
file(REMOVE_RECURSE ${WORK_DIR})
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " cmd "${ARGN}")
    message(FATAL_ERROR "failed (${rc}): ${cmd}")
  endif()
endfunction()
set(consumer ${SOURCE_DIR}/tests/consumer/project)
if(MODE STREQUAL "find_package")
  run(${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${WORK_DIR}/qift -DCMAKE_CXX_COMPILER=${CXX}
      -DQIFT_BUILD_TESTS=OFF -DQIFT_BUILD_BENCH=OFF -DQIFT_BUILD_EXAMPLES=OFF -DQIFT_INSTALL=ON)
  run(${CMAKE_COMMAND} --install ${WORK_DIR}/qift --prefix ${WORK_DIR}/prefix)
  run(${CMAKE_COMMAND} -S ${consumer} -B ${WORK_DIR}/build -DCMAKE_CXX_COMPILER=${CXX}
      -DQIFT_CONSUMER_MODE=find_package -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix)
else()
  run(${CMAKE_COMMAND} -S ${consumer} -B ${WORK_DIR}/build -DCMAKE_CXX_COMPILER=${CXX}
      -DQIFT_CONSUMER_MODE=add_subdirectory -DQIFT_SOURCE_DIR=${SOURCE_DIR})
endif()
run(${CMAKE_COMMAND} --build ${WORK_DIR}/build)
run(${WORK_DIR}/build/consumer)
