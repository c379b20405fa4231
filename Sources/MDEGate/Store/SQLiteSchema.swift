import Foundation
import GRDB
import MDEGateCore
import MDEGateWire

extension SQLiteStore {
    /// Schema versions, never edited once released: a new version is a new migration.
    static let migrator: DatabaseMigrator = {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            // STRICT: a value of the wrong type is refused on write instead of read back wrong.
            // `seq` is the order in which requests were first stored (an upsert keeps it), the
            // tie-break among equal `created_at_ns`. A response exists iff its status is set;
            // SQLite stores an empty body as NULL.
            try db.execute(
                sql: """
                    CREATE TABLE requests (
                        seq INTEGER PRIMARY KEY,
                        id TEXT NOT NULL UNIQUE,
                        machine_action_id TEXT NOT NULL,
                        comment TEXT NOT NULL,
                        client_uid INTEGER NOT NULL,
                        client_pid INTEGER NOT NULL,
                        client_name TEXT,
                        state TEXT NOT NULL,
                        attempts INTEGER NOT NULL,
                        joined TEXT,
                        created_at_ns INTEGER NOT NULL,
                        completed_at_ns INTEGER,
                        response_status INTEGER,
                        response_body BLOB,
                        response_content_type TEXT,
                        last_error TEXT
                    ) STRICT;
                    CREATE INDEX requests_state ON requests(state);
                    CREATE INDEX requests_created_at ON requests(created_at_ns);
                    CREATE INDEX requests_completed_at ON requests(completed_at_ns);

                    CREATE TABLE attempts (time_ns INTEGER NOT NULL) STRICT;
                    CREATE INDEX attempts_time ON attempts(time_ns);

                    CREATE TABLE pause (
                        id INTEGER PRIMARY KEY CHECK (id = 1),
                        until_ns INTEGER
                    ) STRICT;
                    INSERT INTO pause (id, until_ns) VALUES (1, NULL);
                    """)
        }
        migrator.registerMigration("v2: one ledger and one pause per upstream API") { db in
            // Every request so far was a cancel: its machine action id becomes the target, and
            // every attempt and the pause were cancel's. `comment` stays NOT NULL: the GET routes
            // store '' and their route says they have none. `options`: a JSON object of the other
            // parameters, NULL when there are none (every cancel). Attempts keep their one index
            // (time): a departure finds its row among the few at one instant without a second.
            try db.execute(
                sql: """
                    ALTER TABLE requests RENAME COLUMN machine_action_id TO target;
                    ALTER TABLE requests ADD COLUMN api TEXT NOT NULL DEFAULT 'cancel';
                    ALTER TABLE requests ADD COLUMN options TEXT;

                    ALTER TABLE attempts ADD COLUMN api TEXT NOT NULL DEFAULT 'cancel';

                    CREATE TABLE pauses (api TEXT PRIMARY KEY, until_ns INTEGER NOT NULL) STRICT;
                    INSERT INTO pauses (api, until_ns) SELECT 'cancel', until_ns FROM pause WHERE until_ns IS NOT NULL;
                    DROP TABLE pause;
                    """)
        }
        migrator.registerMigration("v3: queue waits and the audit listing") { db in
            // `sent_at_ns`: when the first attempt left; NULL for requests stored before (their
            // queue wait is unknown). The indexes serve the listing's filters, newest first (each
            // ends with created_at_ns, and SQLite keeps the rowid `seq` in every index, the
            // listing's tie-break).
            try db.execute(
                sql: """
                    ALTER TABLE requests ADD COLUMN sent_at_ns INTEGER;
                    DROP INDEX requests_state;
                    CREATE INDEX requests_state ON requests(state, created_at_ns);
                    CREATE INDEX requests_client_name ON requests(client_name, created_at_ns);
                    CREATE INDEX requests_client_uid ON requests(client_uid, created_at_ns);
                    CREATE INDEX requests_target ON requests(target COLLATE NOCASE, created_at_ns);
                    CREATE INDEX requests_api ON requests(api, created_at_ns);
                    """)
        }
        return migrator
    }()

    private static let columns = """
        id, target, comment, client_uid, client_pid, client_name, state, attempts, joined, \
        created_at_ns, completed_at_ns, response_status, response_body, response_content_type, last_error, \
        api, options, sent_at_ns
        """

    private static let upsertSQL = """
        INSERT INTO requests (\(columns)) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT(id) DO UPDATE SET
            target = excluded.target, comment = excluded.comment, api = excluded.api, options = excluded.options,
            client_uid = excluded.client_uid, client_pid = excluded.client_pid,
            client_name = excluded.client_name, state = excluded.state, attempts = excluded.attempts,
            joined = excluded.joined, created_at_ns = excluded.created_at_ns,
            completed_at_ns = excluded.completed_at_ns, response_status = excluded.response_status,
            response_body = excluded.response_body, response_content_type = excluded.response_content_type,
            last_error = excluded.last_error, sent_at_ns = excluded.sent_at_ns
        """

    /// Writes one transaction's changes in order, so a later change to the same record wins.
    static func write(_ changes: [StoreChange], to db: Database) throws {
        var newestAttempt: Int64?
        for change in changes {
            switch change {
            case .record(let record):
                try db.cachedStatement(sql: upsertSQL).execute(arguments: arguments(of: record))
            case .attempt(let api, let time):
                let ns = time.nanosecondsSinceEpoch
                try db.cachedStatement(sql: "INSERT INTO attempts (api, time_ns) VALUES (?, ?)")
                    .execute(arguments: [api.name, ns])
                newestAttempt = max(newestAttempt ?? ns, ns)
            case .departure(let api, let recorded, let departed):
                // Equal times are interchangeable: moving any one of them is the same ledger.
                try db.cachedStatement(
                    sql: """
                        UPDATE attempts SET time_ns = ? WHERE rowid = \
                        (SELECT rowid FROM attempts WHERE api = ? AND time_ns = ? LIMIT 1)
                        """
                ).execute(arguments: [departed.nanosecondsSinceEpoch, api.name, recorded.nanosecondsSinceEpoch])
            case .pause(let api, let until?):
                try db.cachedStatement(sql: "INSERT OR REPLACE INTO pauses (api, until_ns) VALUES (?, ?)")
                    .execute(arguments: [api.name, until.nanosecondsSinceEpoch])
            case .pause(let api, nil):
                try db.cachedStatement(sql: "DELETE FROM pauses WHERE api = ?").execute(arguments: [api.name])
            case .forget(let id):
                try db.cachedStatement(sql: "DELETE FROM requests WHERE id = ?").execute(arguments: [id])
            }
        }
        if let newestAttempt {
            try db.cachedStatement(sql: "DELETE FROM attempts WHERE time_ns < ?")
                .execute(arguments: [newestAttempt - attemptRetention.nanoseconds])
        }
    }

    private static func arguments(of record: RequestRecord) -> StatementArguments {
        let values: [(any DatabaseValueConvertible)?] = [
            record.id, record.call.target, record.call.comment ?? "",
            Int64(record.client.uid), Int64(record.client.pid), record.client.name,
            record.state.rawValue, record.attempts, record.joined,
            record.createdAt.nanosecondsSinceEpoch, record.completedAt?.nanosecondsSinceEpoch,
            record.response?.status, record.response.map { Data($0.body) }, record.response?.contentType,
            record.lastError, record.call.api.name,
            record.call.options.isEmpty ? nil : String(decoding: JSON.encode(record.call.options), as: UTF8.self),
            record.sentAt?.nanosecondsSinceEpoch,
        ]
        return StatementArguments(values)
    }

    /// A page of the audit listing: newest first, `limit` + 1 rows read to know whether there is
    /// a next page. Each filter is one indexed condition.
    static func requests(_ db: Database, matching query: RequestQuery, path: String) throws -> RequestPage {
        var conditions: [String] = []
        var arguments: [(any DatabaseValueConvertible)?] = []
        if let name = query.clientName {
            conditions.append("client_name = ?")
            arguments.append(name)
        }
        if let uid = query.uid {
            conditions.append("client_uid = ?")
            arguments.append(Int64(uid))
        }
        if !query.states.isEmpty {
            conditions.append("state IN (\(query.states.map { _ in "?" }.joined(separator: ", ")))")
            arguments += query.states.map(\.rawValue)
        }
        if let api = query.api {
            conditions.append("api = ?")
            arguments.append(api.name)
        }
        if let target = query.target {
            conditions.append("target = ? COLLATE NOCASE")
            arguments.append(target)
        }
        if let since = query.since {
            conditions.append("created_at_ns >= ?")
            arguments.append(since.nanosecondsSinceEpoch)
        }
        if let until = query.until {
            conditions.append("created_at_ns < ?")
            arguments.append(until.nanosecondsSinceEpoch)
        }
        if let after = query.after {
            conditions.append("(created_at_ns, seq) < (?, ?)")
            arguments += [after.createdAt, after.sequence]
        }
        let filter = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
        let rows = try Row.fetchCursor(
            db,
            sql: "SELECT \(columns), seq FROM requests \(filter) ORDER BY created_at_ns DESC, seq DESC LIMIT ?",
            arguments: StatementArguments(arguments + [query.limit + 1]))
        var records: [RequestRecord] = []
        var last: RequestCursor?
        var more = false
        while let row = try rows.next() {
            guard records.count < query.limit else {
                more = true
                break
            }
            let record = try record(from: row, path: path)
            records.append(record)
            last = RequestCursor(createdAt: record.createdAt.nanosecondsSinceEpoch, sequence: try row.decode(atIndex: 18))
        }
        return RequestPage(records: records, next: more ? last : nil)
    }

    static func read(_ db: Database, attemptsSince since: Int64, path: String) throws -> StoredState {
        var records: [RequestRecord] = []
        let rows = try Row.fetchCursor(db, sql: "SELECT \(columns) FROM requests ORDER BY created_at_ns, seq")
        while let row = try rows.next() {
            records.append(try record(from: row, path: path))
        }
        var pauses: [UpstreamAPI: Timestamp] = [:]
        for row in try Row.fetchAll(db, sql: "SELECT api, until_ns FROM pauses") {
            pauses[UpstreamAPI(row[0])] = Timestamp(nanosecondsSinceEpoch: row[1])
        }
        return StoredState(records: records, attempts: try attempts(db, since: since), pauses: pauses)
    }

    /// Each API's attempts at or after `since`, oldest first.
    static func attempts(_ db: Database, since: Int64) throws -> [UpstreamAPI: [Timestamp]] {
        var attempts: [UpstreamAPI: [Timestamp]] = [:]
        let rows = try Row.fetchCursor(
            db, sql: "SELECT api, time_ns FROM attempts WHERE time_ns >= ? ORDER BY time_ns", arguments: [since])
        while let row = try rows.next() {
            attempts[UpstreamAPI(row[0]), default: []].append(Timestamp(nanosecondsSinceEpoch: row[1]))
        }
        return attempts
    }

    private static func record(from row: Row, path: String) throws -> RequestRecord {
        let id: String = try row.decode(atIndex: 0)
        let stateName: String = try row.decode(atIndex: 6)
        guard let state = RequestRecord.State(rawValue: stateName) else {
            throw StoreError(
                path: path, "holds request \(id) in an unknown state \"\(stateName)\"; was it written by a newer mdegate?")
        }
        let uid: Int64 = try row.decode(atIndex: 3)
        let pid: Int64 = try row.decode(atIndex: 4)
        guard let clientUID = UInt32(exactly: uid), let clientPID = Int32(exactly: pid) else {
            throw StoreError(path: path, "holds request \(id) with an impossible client uid \(uid) or pid \(pid)")
        }
        let status: Int? = try row.decode(atIndex: 11)
        let response: RequestRecord.Response? =
            if let status {
                RequestRecord.Response(
                    status: status, body: [UInt8](try row.decode(Data?.self, atIndex: 12) ?? Data()),
                    contentType: try row.decode(atIndex: 13))
            } else {
                nil
            }
        let completedAt: Int64? = try row.decode(atIndex: 10)
        let api = UpstreamAPI(try row.decode(String.self, atIndex: 15))
        guard let route = Route.named(api) else {
            throw StoreError(
                path: path, "holds request \(id) for an unknown upstream API \"\(api)\"; was it written by a newer mdegate?")
        }
        var options: [String: String] = [:]
        if let json: String = try row.decode(atIndex: 16) {
            guard let decoded = try? JSON.decoder.decode([String: String].self, from: Data(json.utf8)) else {
                throw StoreError(path: path, "holds request \(id) with unreadable options \(json.prefix(80))")
            }
            options = decoded
        }
        let comment: String = try row.decode(atIndex: 2)
        let call = ActionCall(
            api: api, target: try row.decode(atIndex: 1), comment: route.method == "POST" ? comment : nil, options: options)
        return RequestRecord(
            id: id, call: call,
            client: RequestRecord.Client(uid: clientUID, pid: clientPID, name: try row.decode(atIndex: 5)),
            state: state, attempts: try row.decode(atIndex: 7), joined: try row.decode(atIndex: 8),
            createdAt: Timestamp(nanosecondsSinceEpoch: try row.decode(atIndex: 9)),
            completedAt: completedAt.map(Timestamp.init(nanosecondsSinceEpoch:)),
            response: response, lastError: try row.decode(atIndex: 14),
            sentAt: try row.decode(Int64?.self, atIndex: 17).map(Timestamp.init(nanosecondsSinceEpoch:)))
    }
}

