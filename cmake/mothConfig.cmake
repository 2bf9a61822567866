# CMake package configuration for libmoth, used from the source tree:
#   cmake -Dmoth_DIR=<moth>/cmake ...      then   find_package(moth CONFIG REQUIRED)
#   target_link_libraries(app PRIVATE moth::moth)
# It imports <moth>/target/release/libmoth.so (build it first with
# `cargo build --release`) with include/ (moth.h) and bindings/cpp/
# (moth.hpp) as include directories. libmoth.so finds libtorch through the
# rpath it was linked with; a C++ program that uses libtorch itself also
# needs find_package(Torch) (see examples/cpp/CMakeLists.txt).
get_filename_component(_moth_root "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)
set(MOTH_LIBRARY "${_moth_root}/target/release/libmoth.so")
if(NOT EXISTS "${MOTH_LIBRARY}")
  set(moth_FOUND FALSE)
  set(moth_NOT_FOUND_MESSAGE
      "${MOTH_LIBRARY} does not exist: run `cargo build --release` in ${_moth_root}")
  return()
endif()
if(NOT TARGET moth::moth)
  add_library(moth::moth SHARED IMPORTED)
  set_target_properties(moth::moth PROPERTIES
    IMPORTED_LOCATION "${MOTH_LIBRARY}"
    IMPORTED_NO_SONAME TRUE
    INTERFACE_INCLUDE_DIRECTORIES "${_moth_root}/include;${_moth_root}/bindings/cpp")
endif()
set(moth_FOUND TRUE)
unset(_moth_root)
