#include "logging.h"

#include <cstdio>
#include <mutex>

namespace bimaco {
namespace trt {

namespace {

std::mutex g_mutex;
nvinfer1::ILoggerFinder* g_finder = nullptr;

nvinfer1::ILogger* current_logger() noexcept {
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_finder != nullptr) {
      // findLogger is not noexcept in the 10.x header: keep an exception out of TensorRT.
      try {
        if (nvinfer1::ILogger* l = g_finder->findLogger()) return l;
      } catch (...) {
      }
    }
  }
  return ::getLogger();  // libnvinfer's logger (the one the application gave its builder/runtime)
}

}  // namespace

void set_logger_finder(nvinfer1::ILoggerFinder* finder) noexcept {
  std::lock_guard<std::mutex> lock(g_mutex);
  // The first finder wins: TensorRT calls this once per registry that loads the library.
  if (g_finder == nullptr && finder != nullptr) g_finder = finder;
}

void log(nvinfer1::ILogger::Severity severity, const std::string& message) noexcept {
  const std::string text = "[bimaco] " + message;
  if (nvinfer1::ILogger* logger = current_logger()) {
    logger->log(severity, text.c_str());
    return;
  }
  if (severity <= nvinfer1::ILogger::Severity::kWARNING) std::fprintf(stderr, "%s\n", text.c_str());
}

}  // namespace trt
}  // namespace bimaco
