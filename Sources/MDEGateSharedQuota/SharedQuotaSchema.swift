import Logging
import PostgresNIO

/// The shared ledger's tables and functions in PostgreSQL, created by mdegate on first use.
///
/// Versions are applied in order, each in its own transaction, under an advisory lock so that
/// several hosts starting at once do not race; a version, once released, is never edited. The
/// applied versions are listed in `mdegate_schema`. Several quota keys (app registrations) can
/// share one database: every row carries its key.
public enum SharedQuotaSchema {
    /// One schema version: its number, what it is for, and its SQL.
    struct Migration: Sendable {
        let version: Int32
        let name: String
        let sql: [String]
    }

    /// The advisory lock that serializes migrations across hosts (any constant no other
    /// application of the database uses; "mdegate" in ASCII).
    static let migrationLock: Int64 = 0x6d64_6567_6174_65

    static let migrations: [Migration] = [
        Migration(
            version: 1, name: "attempts, pauses, and the slot decision",
            sql: [
                """
                CREATE TABLE mdegate_attempts (
                    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    quota_key text NOT NULL,
                    api text NOT NULL,
                    host text NOT NULL,
                    at timestamptz NOT NULL
                )
                """,
                "CREATE INDEX mdegate_attempts_slot ON mdegate_attempts (quota_key, api, at)",
                """
                CREATE TABLE mdegate_pauses (
                    quota_key text NOT NULL,
                    api text NOT NULL,
                    until timestamptz NOT NULL,
                    host text NOT NULL,
                    PRIMARY KEY (quota_key, api)
                )
                """,
                // The quota rule, on the server's clock: for every limit N/W, an attempt may start
                // at t only if fewer than N attempts started in (t - W - guard, t]. With k attempts
                // inside, that limit frees a slot when the (k - N + 1)-th oldest of them leaves,
                // at its time + W + guard. One call: lock the key and API, read the clock, count,
                // insert only if every limit (and the pause) allows, else say how long to wait.
                // Attempts are kept 25 hours (or the longest window, if longer) and deleted on the
                // way: never by the caller's limits alone, because a host configured with a shorter
                // window than another must not delete what the other still counts.
                """
                CREATE FUNCTION mdegate_take_slot(
                    p_key text, p_api text, p_host text, p_calls integer[], p_window_ms bigint[], p_guard_ms bigint
                ) RETURNS TABLE (
                    granted boolean, server_time timestamptz, wait_ms bigint, paused_until timestamptz, attempt_id bigint
                )
                LANGUAGE plpgsql AS $$
                DECLARE
                    v_now timestamptz;
                    v_free timestamptz;
                    v_span interval;
                    v_longest interval := interval '0';
                    v_count integer;
                    v_leaving timestamptz;
                    v_pause timestamptz;
                    v_id bigint;
                BEGIN
                    PERFORM pg_advisory_xact_lock(hashtextextended(p_key || '/' || p_api, 0));
                    v_now := clock_timestamp();
                    v_free := v_now;
                    SELECT until INTO v_pause FROM mdegate_pauses WHERE quota_key = p_key AND api = p_api;
                    IF v_pause IS NOT NULL AND v_pause > v_free THEN
                        v_free := v_pause;
                    END IF;
                    FOR i IN 1 .. coalesce(array_length(p_calls, 1), 0) LOOP
                        v_span := (p_window_ms[i] + p_guard_ms) * interval '1 millisecond';
                        IF v_span > v_longest THEN
                            v_longest := v_span;
                        END IF;
                        SELECT count(*) INTO v_count FROM mdegate_attempts
                            WHERE quota_key = p_key AND api = p_api AND at > v_now - v_span;
                        IF v_count >= p_calls[i] THEN
                            SELECT a.at INTO v_leaving FROM mdegate_attempts a
                                WHERE a.quota_key = p_key AND a.api = p_api AND a.at > v_now - v_span
                                ORDER BY a.at OFFSET v_count - p_calls[i] LIMIT 1;
                            IF v_leaving + v_span > v_free THEN
                                v_free := v_leaving + v_span;
                            END IF;
                        END IF;
                    END LOOP;
                    DELETE FROM mdegate_attempts
                        WHERE quota_key = p_key AND api = p_api
                        AND at <= v_now - greatest(v_longest, interval '25 hours');
                    IF v_free <= v_now THEN
                        INSERT INTO mdegate_attempts (quota_key, api, host, at) VALUES (p_key, p_api, p_host, v_now)
                            RETURNING id INTO v_id;
                        RETURN QUERY SELECT true, v_now, 0::bigint, NULL::timestamptz, v_id;
                    ELSE
                        RETURN QUERY SELECT false, v_now, ceil(extract(epoch FROM v_free - v_now) * 1000)::bigint,
                            CASE WHEN v_pause > v_now THEN v_pause END, NULL::bigint;
                    END IF;
                END
                $$
                """,
                // A 429: the API pauses for every host until the server's clock says so; a
                // shorter pause never cuts a longer one short.
                """
                CREATE FUNCTION mdegate_pause(p_key text, p_api text, p_host text, p_pause_ms bigint)
                RETURNS timestamptz
                LANGUAGE plpgsql AS $$
                DECLARE
                    v_until timestamptz := clock_timestamp() + p_pause_ms * interval '1 millisecond';
                BEGIN
                    INSERT INTO mdegate_pauses (quota_key, api, until, host) VALUES (p_key, p_api, v_until, p_host)
                        ON CONFLICT (quota_key, api) DO UPDATE
                        SET until = greatest(mdegate_pauses.until, excluded.until),
                            host = CASE WHEN excluded.until > mdegate_pauses.until
                                THEN excluded.host ELSE mdegate_pauses.host END;
                    RETURN (SELECT until FROM mdegate_pauses WHERE quota_key = p_key AND api = p_api);
                END
                $$
                """,
            ]),
    ]

    /// The newest version this mdegate knows.
    public static var currentVersion: Int32 { migrations.last!.version }

    /// The newest version applied in the database; nil when mdegate's tables are not there yet.
    public static func appliedVersion(_ connection: PostgresConnection, logger: Logger) async throws -> Int32? {
        let rows = try await connection.query(
            "SELECT CASE WHEN to_regclass('mdegate_schema') IS NULL THEN NULL ELSE 0 END", logger: logger)
        var exists = false
        for try await marker in rows.decode(Int32?.self) { exists = marker != nil }
        guard exists else { return nil }
        var newest: Int32?
        for try await version in try await connection.query("SELECT max(version) FROM mdegate_schema", logger: logger)
            .decode(Int32?.self)
        {
            newest = version
        }
        return newest
    }

    /// Creates or upgrades the schema; returns the versions it applied (empty when current).
    /// A database at a newer version than this mdegate knows is refused.
    @discardableResult
    public static func migrate(_ client: PostgresClient, logger: Logger) async throws -> [Int32] {
        // The transaction reports a version too new rather than throwing it, so that the error
        // reaches the caller as it is, not wrapped in the transaction's own.
        let outcome: Result<[Int32], SharedQuotaError> = try await client.withTransaction(logger: logger) { connection in
            try await connection.query("SELECT pg_advisory_xact_lock(\(migrationLock))", logger: logger)
            try await connection.query(
                """
                CREATE TABLE IF NOT EXISTS mdegate_schema (
                    version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now()
                )
                """, logger: logger)
            var applied: Set<Int32> = []
            for try await version in try await connection.query("SELECT version FROM mdegate_schema", logger: logger)
                .decode(Int32.self)
            {
                applied.insert(version)
            }
            if let newest = applied.max(), newest > currentVersion {
                return .failure(
                    SharedQuotaError(
                        "the shared quota database is at schema version \(newest), newer than this mdegate knows "
                            + "(\(currentVersion)); upgrade mdegate on this host"))
            }
            var done: [Int32] = []
            for migration in migrations where !applied.contains(migration.version) {
                for statement in migration.sql {
                    try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger)
                }
                try await connection.query(
                    "INSERT INTO mdegate_schema (version, name) VALUES (\(migration.version), \(migration.name))",
                    logger: logger)
                done.append(migration.version)
            }
            return .success(done)
        }
        return try outcome.get()
    }
}

/// A problem with the shared quota that a person has to act on.
public struct SharedQuotaError: Error, CustomStringConvertible {
    public let description: String

    public init(_ description: String) {
        self.description = description
    }
}
