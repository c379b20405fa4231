import HTTPTypes

/// The header fields of the local API that HTTP does not name already (README "Local API").
extension HTTPField.Name {
    /// RFC 7240's preference: `respond-async`, or `wait=N`.
    public static let prefer = Self("Prefer")!
    /// The caller's name for itself, shown in records, status and metrics.
    public static let mdegateClient = Self("Mdegate-Client")!
    /// The id of the request record an answer belongs to.
    public static let mdegateRequestID = Self("Mdegate-Request-Id")!
    /// `true` on an answer that rode on another caller's identical call.
    public static let mdegateCoalesced = Self("Mdegate-Coalesced")!
}
