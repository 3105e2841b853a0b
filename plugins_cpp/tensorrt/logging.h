// Where the plugin library's messages go.
//
// TensorRT's plugin loader (IPluginRegistry::loadLibrary, trtexec
// --dynamicPlugins) hands us an ILoggerFinder through setLoggerFinder; the logger
// it finds is the application's. When the library was loaded some other way
// (ctypes / static registration), libnvinfer's own getLogger() is used, and
// stderr when neither exists.
#pragma once

#include <string>

#include <NvInferRuntime.h>

namespace bimaco {
namespace trt {

void set_logger_finder(nvinfer1::ILoggerFinder* finder) noexcept;

void log(nvinfer1::ILogger::Severity severity, const std::string& message) noexcept;

inline void log_error(const std::string& message) noexcept { log(nvinfer1::ILogger::Severity::kERROR, message); }
inline void log_warning(const std::string& message) noexcept {
  log(nvinfer1::ILogger::Severity::kWARNING, message);
}

}  // namespace trt
}  // namespace bimaco
