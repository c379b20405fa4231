import CFuzzerDriver
import Foundation

// libFuzzer runs this program (`make fuzz`): one input is the bytes a client writes on one connection.
//
// The bytes go through the handlers a connection on the Unix socket gets
// (`LocalAPIServer.configureConnection`: NIOHTTP1's decoder, pipelining and protocol-error
// handlers, then `LocalAPIHandler`), on an in-memory channel, into the real routing and
// validation (`LocalAPI`) and a real `Gateway` whose upstream is scripted. Every input gets a
// fresh gateway, so an upstream call can only come from the input that caused it.
//
// Any broken invariant (see `Exchange.check`) stops the process with a message, which
// libFuzzer reports as a crash and saves the input. A hang is libFuzzer's `-timeout`, or
// `Exchange.run`'s own deadline.
exit(
    mdegate_fuzz_main(CommandLine.argc, CommandLine.unsafeArgv) { data, size in
        Exchange(input: Array(UnsafeBufferPointer(start: data, count: size))).run()
        return 0
    })
