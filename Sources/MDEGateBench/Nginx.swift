import Foundation
import ProcessHarness

#if canImport(Glibc)
import Glibc
#endif

/// nginx as the latency scenario's anchor: a minimal reverse proxy on a Unix socket in the
/// workspace, `proxy_pass` to the simulator over loopback TCP with kept-alive upstream
/// connections. What it adds to a call is what any proxy on a Unix socket costs; mdegate is
/// measured against it.
///
/// One process (`master_process off`, `daemon off`): it stays the benchmark's child, so the
/// watchdog and Ctrl-C end it by its pid, and, run as root, it never switches to another user.
struct RunningNginx: Sendable {
    let process: ChildProcess
    let socketPath: String
    /// nginx's error_log, shown with its output when a run fails.
    let errorLog: String

    /// Where nginx is looked for when `--nginx` is not given: PATH, then the usual sbin
    /// directories (not on a normal user's PATH).
    static let usualPaths = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"]

    /// The nginx executable to start, or why there is none.
    static func find(_ explicit: String?) -> Result<String, BenchError> {
        if let explicit {
            return FileManager.default.isExecutableFile(atPath: explicit)
                ? .success(explicit) : .failure(BenchError("\(explicit) is not an executable"))
        }
        let onPath = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map { "\($0)/nginx" }
        if let found = (onPath + usualPaths).first(where: { FileManager.default.isExecutableFile(atPath: $0) }) {
            return .success(found)
        }
        return .failure(BenchError(
            "nginx is not installed (apt-get install nginx-light, or scripts/install-bench-deps.sh; --nginx PATH for another one)"))
    }

    /// Writes `nginx.conf` into the workspace, starts nginx and waits until its socket accepts.
    static func start(
        executable: String, simulator: RunningSimulator, in workspace: Workspace, environment: Environment
    ) async throws -> RunningNginx {
        let configPath = workspace.file("nginx.conf")
        let socketPath = workspace.file("nginx.sock")
        let errorLog = workspace.file("nginx-error.log")
        let temp = workspace.file("nginx-temp")
        // Like the daemon, nginx adds the simulator's bearer token itself: the client sends both
        // the same request. Both keep-alive counters are raised so that no connection is ever
        // re-opened during a run (nginx closes a client or upstream connection after 1000
        // requests by default).
        let config = """
            # Written by mdegate-bench for one run: the latency scenario's anchor.
            daemon off;
            master_process off;
            worker_processes 1;
            pid \(workspace.file("nginx.pid"));
            error_log \(errorLog) warn;

            events {
                worker_connections 64;
            }

            http {
                access_log off;
                client_body_temp_path \(temp)/body;
                proxy_temp_path \(temp)/proxy;
                fastcgi_temp_path \(temp)/fastcgi;
                uwsgi_temp_path \(temp)/uwsgi;
                scgi_temp_path \(temp)/scgi;

                upstream simulator {
                    server 127.0.0.1:\(simulator.port);
                    keepalive 8;
                    keepalive_requests 1000000;
                }

                server {
                    listen unix:\(socketPath);
                    keepalive_requests 1000000;

                    location / {
                        proxy_pass http://simulator;
                        proxy_http_version 1.1;
                        proxy_set_header Connection "";
                        proxy_set_header Authorization "Bearer \(RunningSimulator.token)";
                    }
                }
            }

            """
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: temp, withIntermediateDirectories: true)
        let process = try await environment.start(
            "nginx", executable: executable, arguments: ["-p", workspace.path + "/", "-c", configPath, "-e", errorLog],
            in: workspace)
        do {
            try await process.waitUntil(timeoutSeconds: min(30, environment.secondsLeft)) {
                (try? HTTPConnection(.unix(socketPath), timeoutSeconds: 1)) != nil
            }
        } catch {
            await process.stop(graceSeconds: 1)
            throw BenchError("\(error)\n\(process.logTail(logFiles: [errorLog]))")
        }
        return RunningNginx(process: process, socketPath: socketPath, errorLog: errorLog)
    }

    var endpoint: Endpoint { .unix(socketPath) }
}
