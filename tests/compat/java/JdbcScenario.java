// The PostgreSQL JDBC (pgjdbc) scenario of scripts/compat.sh. Plain javac,
// the driver jar from Debian's libpostgresql-jdbc-java.

import java.io.StringReader;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.sql.Array;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Types;
import java.time.LocalDate;
import java.time.OffsetDateTime;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Objects;
import java.util.Properties;
import java.util.Set;
import java.util.TimeZone;
import java.util.UUID;
import java.util.concurrent.Callable;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

import org.postgresql.PGConnection;
import org.postgresql.util.PGInterval;

public class JdbcScenario {
    static final String HOST = System.getenv("COMPAT_HOST");
    static final String PORT = System.getenv("COMPAT_PORT");
    static final String DB = System.getenv("COMPAT_DB");
    static final String P = System.getenv("COMPAT_PREFIX");
    static final long STEP_TIMEOUT = Long.parseLong(Objects.requireNonNullElse(System.getenv("COMPAT_STEP_TIMEOUT"), "30"));
    static final String VERSION = org.postgresql.Driver.class.getPackage().getImplementationVersion();
    static final ExecutorService POOL = Executors.newCachedThreadPool(r -> {
        Thread t = new Thread(r);
        t.setDaemon(true);
        return t;
    });

    static class StepFailed extends Exception {
        StepFailed(String m) { super(m); }
    }

    static void report(String step, String status, String detail) {
        String d = detail == null ? "" : detail.replaceAll("\\s+", " ");
        if (d.length() > 400) d = d.substring(0, 400);
        System.out.println("COMPAT\tjdbc\t" + VERSION + "\t" + step + "\t" + status + "\t" + d);
        System.out.flush();
    }

    static void run(String step, Callable<String> body) {
        Future<String> f = POOL.submit(body);
        try {
            String d = f.get(STEP_TIMEOUT, TimeUnit.SECONDS);
            report(step, "pass", d);
        } catch (TimeoutException e) {
            f.cancel(true);
            report(step, "fail", "no answer within " + STEP_TIMEOUT + "s (hang)");
        } catch (Exception e) {
            Throwable c = e.getCause() != null ? e.getCause() : e;
            String state = c instanceof SQLException ? "SQLSTATE " + ((SQLException) c).getSQLState() + ": " : "";
            report(step, "fail", state + c.getClass().getSimpleName() + ": " + c.getMessage());
            c.printStackTrace();
        }
    }

    static void expect(String what, Object got, Object want) throws StepFailed {
        boolean eq = (got instanceof Object[] && want instanceof Object[])
            ? Arrays.deepEquals((Object[]) got, (Object[]) want) : Objects.equals(got, want);
        if (!eq) {
            throw new StepFailed(what + ": expected " + show(want) + ", got " + show(got));
        }
    }

    static String show(Object o) {
        if (o instanceof Object[]) return Arrays.deepToString((Object[]) o);
        if (o instanceof byte[]) return Arrays.toString((byte[]) o);
        return String.valueOf(o);
    }

    static Connection connect(String extra) throws SQLException {
        Properties props = new Properties();
        props.setProperty("user", System.getenv("COMPAT_USER"));
        props.setProperty("password", System.getenv("COMPAT_PASSWORD"));
        props.setProperty("connectTimeout", "10");
        String url = "jdbc:postgresql://" + HOST + ":" + PORT + "/" + DB + "?" + extra;
        return DriverManager.getConnection(url, props);
    }

    static String sqlstate(Callable<?> c) throws Exception {
        try {
            c.call();
        } catch (SQLException e) {
            return e.getSQLState();
        }
        return null;
    }

    static long count(Connection c, int id) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement("select count(*) from " + P + "_tx where id = ?")) {
            ps.setInt(1, id);
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                return rs.getLong(1);
            }
        }
    }

    static final String COLS = "i2, i4, i8, n, f8, t, b, bo, d, ts, iv, u, j, ia, ta";
    static final String T_TEXT = "héllo \"wörld\" \\ 'q' ☃";
    static final byte[] BYTEA = {0, (byte) 255, 16, 39, 92};
    static final BigDecimal NUM = new BigDecimal("12345678901234567890.123456789");
    static final OffsetDateTime TS = OffsetDateTime.parse("2024-02-29T12:34:56.789Z");
    static final UUID U = UUID.fromString("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    static final String JSON = "{\"a\": [1, 2.5, {\"b\": null}], \"s\": \"x\"}";

    /** Inserts rows id and id+1 (all NULL), reads them back through conn. */
    static String types(Connection c, int id, boolean binary) throws Exception {
        String ins = "insert into " + P + "_types (id, " + COLS + ") values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?::interval, ?, ?::jsonb, ?, ?)";
        try (PreparedStatement ps = c.prepareStatement(ins)) {
            ps.setInt(1, id);
            ps.setShort(2, (short) 12345);
            ps.setInt(3, Integer.MIN_VALUE);
            ps.setLong(4, 9007199254740993L);
            ps.setBigDecimal(5, NUM);
            ps.setDouble(6, 3.25);
            ps.setString(7, T_TEXT);
            ps.setBytes(8, BYTEA);
            ps.setBoolean(9, true);
            ps.setObject(10, LocalDate.of(2024, 2, 29));
            ps.setObject(11, TS);
            ps.setObject(12, new PGInterval("1 day 02:03:04.5"));
            ps.setObject(13, U);
            ps.setObject(14, JSON, Types.OTHER);
            ps.setArray(15, c.createArrayOf("int4", new Integer[] {1, null, 3}));
            ps.setArray(16, c.createArrayOf("text", new String[] {"a b", "c", null, "q\"x"}));
            ps.executeUpdate();
            ps.setInt(1, id + 1);
            int[] sqlTypes = {Types.SMALLINT, Types.INTEGER, Types.BIGINT, Types.NUMERIC, Types.DOUBLE, Types.VARCHAR,
                Types.BINARY, Types.BOOLEAN, Types.DATE, Types.TIMESTAMP_WITH_TIMEZONE, Types.OTHER, Types.OTHER,
                Types.OTHER, Types.ARRAY, Types.ARRAY};
            for (int i = 0; i < sqlTypes.length; i++) ps.setNull(i + 2, sqlTypes[i]);
            ps.executeUpdate();
        }
        String sel = "select " + COLS + " from " + P + "_types where id in (?, ?) order by id";
        try (PreparedStatement ps = c.prepareStatement(sel)) {
            ps.setInt(1, id);
            ps.setInt(2, id + 1);
            try (ResultSet rs = ps.executeQuery()) {
                if (!rs.next()) throw new StepFailed("no first row");
                expect("i2", rs.getShort(1), (short) 12345);
                expect("i4", rs.getInt(2), Integer.MIN_VALUE);
                expect("i8", rs.getLong(3), 9007199254740993L);
                expect("n", rs.getBigDecimal(4), NUM);
                expect("f8", rs.getDouble(5), 3.25);
                expect("t", rs.getString(6), T_TEXT);
                expect("b", Arrays.toString(rs.getBytes(7)), Arrays.toString(BYTEA));
                expect("bo", rs.getBoolean(8), true);
                expect("d", rs.getObject(9, LocalDate.class), LocalDate.of(2024, 2, 29));
                expect("ts", rs.getObject(10, OffsetDateTime.class).toInstant(), TS.toInstant());
                expect("iv", rs.getObject(11), new PGInterval("1 day 02:03:04.5"));
                expect("u", rs.getObject(12, UUID.class), U);
                expect("j", rs.getString(13), JSON);
                expect("ia", rs.getArray(14).getArray(), new Integer[] {1, null, 3});
                expect("ta", rs.getArray(15).getArray(), new String[] {"a b", "c", null, "q\"x"});
                if (!rs.next()) throw new StepFailed("no NULL row");
                for (int i = 1; i <= 15; i++) {
                    if (rs.getObject(i) != null) throw new StepFailed("column " + i + " of the NULL row is not NULL");
                }
            }
        }
        return binary ? "prepareThreshold=-1 (binary transfer)" : "binaryTransfer=false";
    }

    static final List<Long> KEYS = new ArrayList<>();
    static {
        for (long i = 1; i <= 1000; i++) KEYS.add(i * 7919);
    }

    public static void main(String[] args) throws Exception {
        TimeZone.setDefault(TimeZone.getTimeZone("UTC"));
        final Connection[] holder = new Connection[1];
        run("connect_scram", () -> {
            holder[0] = connect("sslmode=disable");
            try (Statement s = holder[0].createStatement(); ResultSet rs = s.executeQuery("select current_user")) {
                rs.next();
                expect("current_user", rs.getString(1), "app");
            }
            return "";
        });
        if (holder[0] == null) System.exit(1);
        Connection c = holder[0];

        run("connect_tls", () -> {
            String ca = System.getenv("COMPAT_CA");
            try (Connection t = connect("sslmode=verify-full&sslrootcert=" + ca);
                 Statement s = t.createStatement(); ResultSet rs = s.executeQuery("select 'tls'")) {
                rs.next();
                expect("select", rs.getString(1), "tls");
            }
            return "sslmode=verify-full with the CA as sslrootcert";
        });
        run("simple_query", () -> {
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("select 1, 'one' union all select 2, 'two'")) {
                List<String> got = new ArrayList<>();
                while (rs.next()) got.add(rs.getInt(1) + ":" + rs.getString(2));
                expect("rows", got, List.of("1:one", "2:two"));
            }
            return "Statement.executeQuery";
        });
        run("params", () -> {
            try (PreparedStatement ps = c.prepareStatement("select ?::int4 + 1, ?::text, ?::int8 is null")) {
                ps.setInt(1, 41);
                ps.setString(2, "x");
                ps.setNull(3, Types.BIGINT);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    expect("row", rs.getInt(1) + "," + rs.getString(2) + "," + rs.getBoolean(3), "42,x,true");
                }
            }
            return "";
        });
        run("prepared_reuse", () -> {
            // From its 5th use (prepareThreshold) pgjdbc runs the statement
            // as a named server-side prepared statement.
            Set<Integer> pids = new HashSet<>();
            try (Connection b = connect("sslmode=disable");
                 PreparedStatement ps = c.prepareStatement("select ?::int8 * 2, pg_backend_pid()")) {
                b.setAutoCommit(false);
                c.setAutoCommit(false);
                for (int i = 0; i < 40; i++) {
                    if (i % 2 == 1) {
                        try (Statement s = b.createStatement()) { s.execute("select 1"); }
                    }
                    ps.setLong(1, i);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        expect("result", rs.getLong(1), 2L * i);
                        pids.add(rs.getInt(2));
                    }
                    c.commit();
                    if (i % 2 == 1) b.commit();
                }
            } finally {
                c.setAutoCommit(true);
            }
            if (pids.size() < 2) throw new StepFailed("40 transactions all ran on one server connection " + pids);
            return "40 transactions on " + pids.size() + " server connections";
        });
        String insTx = "insert into " + P + "_tx values (?, ?)";
        run("tx_commit", () -> {
            c.setAutoCommit(false);
            try (PreparedStatement ps = c.prepareStatement(insTx)) {
                ps.setInt(1, 1);
                ps.setString(2, "committed");
                ps.executeUpdate();
                c.commit();
            } finally {
                c.setAutoCommit(true);
            }
            expect("count", count(c, 1), 1L);
            return "";
        });
        run("tx_rollback", () -> {
            c.setAutoCommit(false);
            try (PreparedStatement ps = c.prepareStatement(insTx)) {
                ps.setInt(1, 2);
                ps.setString(2, "rolled back");
                ps.executeUpdate();
                c.rollback();
            } finally {
                c.setAutoCommit(true);
            }
            expect("count", count(c, 2), 0L);
            return "";
        });
        run("tx_error_rollback", () -> {
            c.setAutoCommit(false);
            try (PreparedStatement ps = c.prepareStatement(insTx); Statement s = c.createStatement()) {
                ps.setInt(1, 3);
                ps.setString(2, "lost");
                ps.executeUpdate();
                expect("1/0", sqlstate(() -> s.executeQuery("select 1/0")), "22012");
                expect("after the error", sqlstate(() -> s.executeQuery("select 1")), "25P02");
                c.rollback();
            } finally {
                c.setAutoCommit(true);
            }
            expect("count", count(c, 3), 0L);
            return "";
        });
        run("types_text", () -> {
            try (Connection t = connect("sslmode=disable&binaryTransfer=false")) {
                return types(t, 1, false);
            }
        });
        run("types_binary", () -> {
            try (Connection t = connect("sslmode=disable&prepareThreshold=-1")) {
                return types(t, 3, true);
            }
        });
        run("big_result", () -> {
            long n = 0, sum = 0;
            String last = null;
            try (Statement s = c.createStatement();
                 ResultSet rs = s.executeQuery("select g, 'row ' || g from generate_series(1, 50000) g")) {
                while (rs.next()) {
                    n++;
                    sum += rs.getInt(1);
                    last = rs.getString(2);
                }
            }
            expect("rows", n + "," + sum + "," + last, "50000,1250025000,row 50000");
            return "";
        });
        run("cancel", () -> {
            long start = System.nanoTime();
            try (Statement s = c.createStatement()) {
                POOL.submit(() -> {
                    Thread.sleep(1000);
                    s.cancel();
                    return null;
                });
                expect("sqlstate", sqlstate(() -> s.executeQuery("select pg_sleep(60)")), "57014");
            }
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("select 'ok'")) {
                rs.next();
                expect("after cancel", rs.getString(1), "ok");
            }
            return String.format("cancelled after %.1fs", (System.nanoTime() - start) / 1e9);
        });
        StringBuilder copyData = new StringBuilder();
        for (int i = 1; i <= 1000; i++) copyData.append(i).append("\tcopy row ").append(i).append('\t').append(i).append(".5\n");
        run("copy_in", () -> {
            long n = c.unwrap(PGConnection.class).getCopyAPI()
                .copyIn("copy " + P + "_copy (id, v, n) from stdin", new StringReader(copyData.toString()));
            expect("copied", n, 1000L);
            try (Statement s = c.createStatement();
                 ResultSet rs = s.executeQuery("select count(*), sum(id), sum(n)::text from " + P + "_copy")) {
                rs.next();
                expect("table", rs.getLong(1) + "," + rs.getLong(2) + "," + rs.getString(3), "1000,500500,501000.0");
            }
            return "CopyManager";
        });
        run("copy_out", () -> {
            StringWriter w = new StringWriter();
            c.unwrap(PGConnection.class).getCopyAPI()
                .copyOut("copy (select id, v, n from " + P + "_copy order by id) to stdout", w);
            expect("rows", w.toString(), copyData.toString());
            return "CopyManager";
        });
        run("shard_insert", () -> {
            // A JDBC batch: pgjdbc sends the rows' Bind/Execute pipelined.
            try (PreparedStatement ps = c.prepareStatement("insert into " + P + "_items (id, v) values (?, ?)")) {
                for (long k : KEYS) {
                    ps.setLong(1, k);
                    ps.setString(2, "item " + k);
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                expect("batch", counts.length, 1000);
            }
            return "executeBatch (autocommit)";
        });
        // Rows a failed batch left out, one at a time, so that the read
        // steps test reads.
        try (PreparedStatement ps = c.prepareStatement("insert into " + P + "_items (id, v) values (?, ?) on conflict (id) do nothing")) {
            for (long k : KEYS) {
                ps.setLong(1, k);
                ps.setString(2, "item " + k);
                ps.executeUpdate();
            }
        }
        run("shard_read", () -> {
            try (PreparedStatement ps = c.prepareStatement("select v from " + P + "_items where id = ?")) {
                for (long k : KEYS) {
                    ps.setLong(1, k);
                    try (ResultSet rs = ps.executeQuery()) {
                        expect("key " + k, rs.next() ? rs.getString(1) : null, "item " + k);
                    }
                }
            }
            return "";
        });
        run("shard_count", () -> {
            try (Statement s = c.createStatement();
                 ResultSet rs = s.executeQuery("select count(*), sum(id) from " + P + "_items")) {
                rs.next();
                long sum = 0;
                for (long k : KEYS) sum += k;
                expect("count, sum", rs.getLong(1) + "," + rs.getLong(2), "1000," + sum);
            }
            return "";
        });
        run("shard_order_limit", () -> {
            try (Statement s = c.createStatement();
                 ResultSet rs = s.executeQuery("select id, v from " + P + "_items order by id desc limit 3")) {
                List<String> got = new ArrayList<>();
                while (rs.next()) got.add(rs.getLong(1) + ":" + rs.getString(2));
                List<String> want = new ArrayList<>();
                for (int i = 999; i >= 997; i--) want.add(KEYS.get(i) + ":item " + KEYS.get(i));
                expect("rows", got, want);
            }
            return "";
        });
        System.exit(0);
    }
}
