import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The simulator's HTTP/1.1 server: NIO's standard server pipeline in front of `RequestHandler`,
/// behind TLS when it has a certificate.
///
/// It runs until SIGTERM or SIGINT, then closes the listening socket and every connection (idle
/// keep-alive ones included) and returns, so the process exits 0.
struct SimulatorServer {
    var host: String
    var port: Int
    var simulator: Simulator
    /// Nil: plain HTTP.
    var tls: NIOSSLContext?

    /// Binds, calls `onListening` with the bound address, and serves until a stop signal.
    func run(onListening: (SocketAddress) throws -> Void) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        let simulator = self.simulator
        let tls = self.tls
        let channel: any Channel
        do {
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 256)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.maxMessagesPerRead, value: 16)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        if let tls {
                            try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls))
                        }
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                        try channel.pipeline.syncOperations.addHandler(RequestHandler(simulator: simulator))
                    }
                }
                .bind(host: self.host, port: self.port)
                .get()
        } catch {
            try await group.shutdownGracefully()
            throw error
        }

        StopSignals.install { channel.close(promise: nil) }

        do {
            try onListening(channel.localAddress!)
        } catch {
            channel.close(promise: nil)
            try? await channel.closeFuture.get()
            try await group.shutdownGracefully()
            throw error
        }
        try await channel.closeFuture.get()
        // Shutting the loops down closes the remaining connections, idle keep-alive ones included.
        try await group.shutdownGracefully()
    }
}

extension SimulatorServer {
    /// The TLS setup for `--tls-certificate` and `--tls-key` (PEM), checked at start-up so a bad
    /// file stops the simulator with a message instead of failing every handshake.
    ///
    /// ALPN offers HTTP/1.1 only: that is all this server speaks, and a client that asks for h2
    /// (libcurl does) settles on HTTP/1.1.
    static func tlsContext(certificatePath: String, keyPath: String) throws(CertificateFileError) -> NIOSSLContext {
        try CertificateFileError.requireReadable(certificatePath, flag: "--tls-certificate")
        try CertificateFileError.requireReadable(keyPath, flag: "--tls-key")
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMFile(certificatePath)
        } catch {
            throw CertificateFileError(flag: "--tls-certificate", path: certificatePath, problem: "the file cannot be read as PEM certificates (\(error))")
        }
        guard !chain.isEmpty else {
            throw CertificateFileError(flag: "--tls-certificate", path: certificatePath, problem: "the file holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
        }
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(file: keyPath, format: .pem)
        } catch {
            throw CertificateFileError(flag: "--tls-key", path: keyPath, problem: "the file cannot be read as an unencrypted PEM private key (\(error))")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.applicationProtocols = ["http/1.1"]
        do {
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw CertificateFileError(
                flag: "--tls-key", path: keyPath, problem: "the key does not fit the certificate in --tls-certificate \(certificatePath) (\(error))")
        }
    }
}

/// Turns SIGTERM and SIGINT into one action (closing the server), deterministically.
///
/// A C signal handler may only do async-signal-safe work, so it writes a byte into a pipe and a
/// thread of ours, blocked on the other end, runs the action. The handler stays installed until the
/// process exits, so a second signal during shutdown is harmless. (libdispatch's signal sources were
/// tried first; on Linux they re-raise the signal on whichever thread caught it, and once in a few
/// dozen runs the process died of SIGTERM (exit 143) instead of exiting 0.)
enum StopSignals {
    /// The pipe, created before any handler can run; immutable, so reading it from a handler is safe.
    private static let signalPipe: (read: Int32, write: Int32) = {
        var descriptors: [Int32] = [-1, -1]
        precondition(pipe(&descriptors) == 0, "cannot create the signal pipe")
        return (descriptors[0], descriptors[1])
    }()

    static func install(onSignal action: @escaping @Sendable () -> Void) {
        let signalPipe = Self.signalPipe
        let thread = Thread {
            var byte: UInt8 = 0
            while read(signalPipe.read, &byte, 1) < 0 && errno == EINTR {}
            action()
        }
        thread.start()
        for number in [SIGTERM, SIGINT] {
            signal(number) { _ in
                var byte: UInt8 = 1
                _ = write(StopSignals.signalPipe.write, &byte, 1)
            }
        }
    }
}
