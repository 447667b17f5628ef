# SPDX-License-Identifier: MIT
# Finds xsimd (>= 8.1) and removes the `xtl` link item that Debian's xsimd 8.1 package exports
# without installing xtl (linking would fail with "cannot find -lxtl"). Used by the build tree
# and by the installed qiftConfig.cmake alike.
if(NOT TARGET xsimd)
  find_package(xsimd REQUIRED)
endif()
# xsimd's version file accepts only its own major version, so check the floor by hand.
if(DEFINED xsimd_VERSION AND xsimd_VERSION VERSION_LESS 8.1)
  message(FATAL_ERROR "qift needs xsimd >= 8.1, found ${xsimd_VERSION}")
endif()
get_target_property(_qift_xsimd_libs xsimd INTERFACE_LINK_LIBRARIES)
if(_qift_xsimd_libs AND NOT TARGET xtl)
  list(REMOVE_ITEM _qift_xsimd_libs xtl)
  set_target_properties(xsimd PROPERTIES INTERFACE_LINK_LIBRARIES "${_qift_xsimd_libs}")
endif()
unset(_qift_xsimd_libs)
