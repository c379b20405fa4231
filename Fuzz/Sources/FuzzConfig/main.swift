import CFuzzerDriver
import Foundation

// libFuzzer runs this program (`make fuzz`): one input is a configuration file and an environment.
//
// Input format (seeds in Fuzz/Corpus/FuzzConfig): the YAML file's text, then optionally a
// line `%env`, then one `NAME=VALUE` line per environment variable. A NAME of one or two
// characters stands for one of mdegate's variables (chosen by the sum of its bytes), so
// that mutations land on real keys; a longer NAME is used as written.
//
// Invariants, each a crash when broken:
// - loading returns a configuration or throws a `ConfigurationError`, nothing else;
// - every problem names its key (its message starts with it) or, for the file itself, the
//   file's path;
// - a proxy URL and the password in a shared-quota URL are never echoed in a problem or a
//   warning;
// - a loaded configuration, rendered as `check-config` prints it, loads again (with no
//   environment) to an equal configuration (the README's promise), the proxy's password
//   being masked.
exit(
    mdegate_fuzz_main(CommandLine.argc, CommandLine.unsafeArgv) { data, size in
        let (yaml, environment) = ConfigInput.split(Array(UnsafeBufferPointer(start: data, count: size)))
        ConfigInput.check(yaml: yaml, environment: environment)
        return 0
    })

