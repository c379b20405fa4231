#ifndef MDEGATE_FUZZER_DRIVER_H
#define MDEGATE_FUZZER_DRIVER_H

#include <stddef.h>
#include <stdint.h>

// libFuzzer's driver, for a program that has a main of its own (SwiftPM gives every executable
// target one, so libFuzzer's main is not linked): runs the fuzzing loop with libFuzzer's
// command line and calls `one` for every input.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*one)(const uint8_t *data, size_t size));

static inline int mdegate_fuzz_main(int argc, char **argv, int (*one)(const uint8_t *data, size_t size)) {
    return LLVMFuzzerRunDriver(&argc, &argv, one);
}

#endif
