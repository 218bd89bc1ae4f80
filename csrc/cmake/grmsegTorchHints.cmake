# Helps find_package(Torch) find the CUDA toolkit and libraries of a pip-installed, CUDA-built torch (whose CMake
# config wants them even for CPU-only code). Included by grmseg's CMakeLists.txt and by grmsegConfig.cmake, so a
# C++ project that finds grmseg gets the same help. Reads CMAKE_PREFIX_PATH (torch.utils.cmake_prefix_path),
# CUDAToolkit_ROOT, CUDA_HOME, CUDA_PATH; sets CUDAToolkit_ROOT, CUDA_TOOLKIT_ROOT_DIR, CUDA_<lib>_LIBRARY and
# GRMSEG_WHEEL_INCLUDE_DIRS (the nvidia/*/include folders of the wheels).
include_guard(GLOBAL)

if(NOT CUDAToolkit_ROOT)
  if(DEFINED ENV{CUDA_HOME})
    set(CUDAToolkit_ROOT "$ENV{CUDA_HOME}")
  elseif(DEFINED ENV{CUDA_PATH})
    set(CUDAToolkit_ROOT "$ENV{CUDA_PATH}")
  elseif(EXISTS "/usr/local/cuda/bin/nvcc")
    set(CUDAToolkit_ROOT "/usr/local/cuda")
  endif()
endif()
if(CUDAToolkit_ROOT AND NOT CUDA_TOOLKIT_ROOT_DIR)
  set(CUDA_TOOLKIT_ROOT_DIR "${CUDAToolkit_ROOT}")  # torch's FindCUDA would guess /usr/local from a nvcc wrapper
endif()
foreach(_prefix IN LISTS CMAKE_PREFIX_PATH)
  # <site-packages>/torch/share/cmake -> <site-packages>/nvidia/*/lib
  get_filename_component(_site "${_prefix}/../../.." ABSOLUTE)
  file(GLOB _nvidia_libs LIST_DIRECTORIES true "${_site}/nvidia/*/lib")
  file(GLOB _nvidia_incs LIST_DIRECTORIES true "${_site}/nvidia/*/include")
  list(APPEND CMAKE_LIBRARY_PATH ${_nvidia_libs})
  list(APPEND GRMSEG_WHEEL_INCLUDE_DIRS ${_nvidia_incs})
endforeach()
if(GRMSEG_WHEEL_INCLUDE_DIRS)
  list(APPEND CMAKE_INCLUDE_PATH ${GRMSEG_WHEEL_INCLUDE_DIRS})
endif()
# The wheels ship only versioned libraries (libnvrtc.so.13, ...), which find_library does not look for: name them
# in the cache variables FindCUDAToolkit reads (CUDA_<name>_LIBRARY), unless already set.
foreach(_dir IN LISTS _nvidia_libs)
  file(GLOB _wheel_libs "${_dir}/lib*.so.*")
  foreach(_lib IN LISTS _wheel_libs)
    get_filename_component(_file "${_lib}" NAME)
    string(REGEX REPLACE "^lib([A-Za-z0-9_]+)\\.so\\..*$" "\\1" _name "${_file}")
    if(NOT _name STREQUAL _file AND NOT CUDA_${_name}_LIBRARY)
      set(CUDA_${_name}_LIBRARY "${_lib}" CACHE FILEPATH "${_name} from the CUDA pip wheels")
    endif()
  endforeach()
endforeach()
