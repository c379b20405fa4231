// The driver is libFuzzer's (linked by -sanitize=fuzzer); this target only declares it.
#include "CFuzzerDriver.h"
