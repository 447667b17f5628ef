# SPDX-License-Identifier: MIT
# Fails when any C++ file of the tree is not clang-format clean.
file(GLOB_RECURSE files ${SOURCE_DIR}/include/*.hpp ${SOURCE_DIR}/tests/*.cpp ${SOURCE_DIR}/tests/*.hpp
     ${SOURCE_DIR}/bench/*.cpp ${SOURCE_DIR}/bench/*.hpp ${SOURCE_DIR}/examples/*.cpp
     ${SOURCE_DIR}/examples/*.hpp ${SOURCE_DIR}/python/*.cpp ${SOURCE_DIR}/python/*.hpp
     ${SOURCE_DIR}/fuzz/*.cpp ${SOURCE_DIR}/fuzz/*.hpp)
execute_process(COMMAND ${CLANG_FORMAT} --dry-run --Werror ${files} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "Unformatted files (run clang-format -i on them)")
endif()
list(LENGTH files n)
message(STATUS "${n} files clang-format clean")
