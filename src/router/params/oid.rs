//! PostgreSQL type OIDs the router reads parameters of, and two markers
//! that are not OIDs (what a cast in the SQL leaves unknown or ambiguous).

pub const UNSPECIFIED: u32 = 0;
pub const NAME: u32 = 19;
pub const INT8: u32 = 20;
pub const INT2: u32 = 21;
pub const INT4: u32 = 23;
pub const TEXT: u32 = 25;
pub const FLOAT4: u32 = 700;
pub const FLOAT8: u32 = 701;
pub const UNKNOWN: u32 = 705;
pub const BPCHAR: u32 = 1042;
pub const VARCHAR: u32 = 1043;
pub const DATE: u32 = 1082;
pub const TIMESTAMP: u32 = 1114;
pub const TIMESTAMPTZ: u32 = 1184;
pub const NUMERIC: u32 = 1700;
pub const UUID: u32 = 2950;

pub const NAME_ARRAY: u32 = 1003;
pub const INT2_ARRAY: u32 = 1005;
pub const INT4_ARRAY: u32 = 1007;
pub const TEXT_ARRAY: u32 = 1009;
pub const BPCHAR_ARRAY: u32 = 1014;
pub const VARCHAR_ARRAY: u32 = 1015;
pub const INT8_ARRAY: u32 = 1016;
pub const FLOAT4_ARRAY: u32 = 1021;
pub const FLOAT8_ARRAY: u32 = 1022;
pub const TIMESTAMP_ARRAY: u32 = 1115;
pub const DATE_ARRAY: u32 = 1182;
pub const TIMESTAMPTZ_ARRAY: u32 = 1185;
pub const NUMERIC_ARRAY: u32 = 1231;
pub const UUID_ARRAY: u32 = 2951;

/// PostgreSQL's FirstNormalObjectId: OIDs from here on are the
/// database's own types (enums, domains), whose text form the router
/// reads as it reads a literal, and whose binary form it cannot read.
pub const FIRST_USER: u32 = 16384;
/// Not an OID: a cast in the SQL to a type the router does not know
/// by name (treated as a user-defined type).
pub const OTHER: u32 = u32::MAX - 1;
/// Not an OID: the SQL casts the parameter to different types, or also
/// uses it uncast, so its type depends on PostgreSQL's analysis order.
pub const AMBIGUOUS: u32 = u32::MAX;

/// The name of a type for messages: PostgreSQL's, or `oid 16385`.
pub fn type_name(t: u32) -> String {
    let known = match t {
        UNSPECIFIED => "unspecified",
        NAME => "name",
        INT8 => "int8",
        INT2 => "int2",
        INT4 => "int4",
        TEXT => "text",
        FLOAT4 => "float4",
        FLOAT8 => "float8",
        UNKNOWN => "unknown",
        BPCHAR => "bpchar",
        VARCHAR => "varchar",
        DATE => "date",
        TIMESTAMP => "timestamp",
        TIMESTAMPTZ => "timestamptz",
        NUMERIC => "numeric",
        UUID => "uuid",
        NAME_ARRAY => "name[]",
        INT2_ARRAY => "int2[]",
        INT4_ARRAY => "int4[]",
        TEXT_ARRAY => "text[]",
        BPCHAR_ARRAY => "bpchar[]",
        VARCHAR_ARRAY => "varchar[]",
        INT8_ARRAY => "int8[]",
        FLOAT4_ARRAY => "float4[]",
        FLOAT8_ARRAY => "float8[]",
        TIMESTAMP_ARRAY => "timestamp[]",
        DATE_ARRAY => "date[]",
        TIMESTAMPTZ_ARRAY => "timestamptz[]",
        NUMERIC_ARRAY => "numeric[]",
        UUID_ARRAY => "uuid[]",
        16 => "bool",
        17 => "bytea",
        26 => "oid",
        114 => "json",
        3802 => "jsonb",
        1083 => "time",
        1266 => "timetz",
        1186 => "interval",
        790 => "money",
        869 => "inet",
        OTHER => "unknown to the proxy (a cast in the SQL)",
        AMBIGUOUS => "ambiguous (the SQL casts it differently or also uses it uncast)",
        _ => "",
    };
    if known.is_empty() {
        format!("oid {t}")
    } else {
        known.to_string()
    }
}
