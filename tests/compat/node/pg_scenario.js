// The node-postgres (pg) scenario of scripts/compat.sh.
'use strict'
const { cfg, COLS, CASTS, PARAMS, StepFailed, expect, compareRow, reporter, KEYS, COPY_LINES } = require('./compat')
const pg = require('pg')
const { from: copyFrom, to: copyTo } = require('pg-copy-streams')
const P = cfg.prefix
const R = reporter('node-pg', require('pg/package.json').version)
// COPY: pg-copy-streams, the add-on node-postgres points to for COPY.

function client (ssl) {
  return new pg.Client({
    host: cfg.host, port: cfg.port, user: cfg.user, password: cfg.password, database: cfg.database,
    ssl: ssl ? { ca: cfg.ca } : false, options: '-c TimeZone=UTC', connectionTimeoutMillis: 10000,
  })
}

async function main () {
  let c
  const ok = await R.run('connect_scram', async () => {
    c = client(false)
    await c.connect()
    expect('current_user', (await c.query('select current_user as u')).rows[0].u, 'app')
  })
  if (!ok) process.exit(1)
  const count = async (id) => (await c.query(`select count(*)::int as n from ${P}_tx where id = $1`, [id])).rows[0].n

  const steps = {
    async connect_tls () {
      const t = client(true)
      await t.connect()
      try {
        expect('encrypted', !!t.connection.stream.encrypted, true)
        expect('select', (await t.query("select 'tls' as v")).rows[0].v, 'tls')
      } finally { await t.end() }
      return 'verified against the CA'
    },
    async simple_query () {
      // No values: a simple Query message.
      const r = await c.query("select 1 as a, 'one' as b union all select 2, 'two'")
      expect('rows', r.rows, [{ a: 1, b: 'one' }, { a: 2, b: 'two' }])
    },
    async params () {
      const r = await c.query('select $1::int4 + 1 as a, $2::text as b, $3::int8 is null as c', [41, 'x', null])
      expect('row', r.rows[0], { a: 42, b: 'x', c: true })
    },
    async prepared_reuse () {
      const b = client(false)
      await b.connect()
      const pids = new Set()
      try {
        for (let i = 0; i < 40; i++) {
          if (i % 2) { await b.query('begin'); await b.query('select 1') }
          await c.query('begin')
          const r = await c.query({ name: 'compat_reuse', text: 'select $1::int8 * 2 as v, pg_backend_pid() as pid', values: [i] })
          await c.query('commit')
          expect('result', r.rows[0].v, String(2 * i))
          pids.add(r.rows[0].pid)
          if (i % 2) await b.query('commit')
        }
      } finally { await b.end() }
      if (pids.size < 2) throw new StepFailed(`40 transactions all ran on one server connection (${[...pids]})`)
      return `40 transactions on ${pids.size} server connections`
    },
    async tx_commit () {
      await c.query('begin')
      await c.query(`insert into ${P}_tx values ($1, $2)`, [1, 'committed'])
      await c.query('commit')
      expect('count', await count(1), 1)
    },
    async tx_rollback () {
      await c.query('begin')
      await c.query(`insert into ${P}_tx values ($1, $2)`, [2, 'rolled back'])
      await c.query('rollback')
      expect('count', await count(2), 0)
    },
    async tx_error_rollback () {
      await c.query('begin')
      await c.query(`insert into ${P}_tx values ($1, $2)`, [3, 'lost'])
      await c.query('select 1 / $1::int', [0]).then(() => { throw new StepFailed('1/0 did not fail') }, (e) => expect('sqlstate', e.code, '22012'))
      await c.query('select 1').then(() => { throw new StepFailed('a statement after the error did not fail') }, (e) => expect('sqlstate', e.code, '25P02'))
      await c.query('rollback')
      expect('count', await count(3), 0)
    },
    types_text: () => types(false, [1, 2]),
    async big_result () {
      const r = await c.query("select g, 'row ' || g as v from generate_series(1, 50000) g")
      expect('rows', [r.rows.length, r.rows.reduce((s, x) => s + x.g, 0)], [50000, 1250025000])
      expect('last', r.rows[49999], { g: 50000, v: 'row 50000' })
    },
    async cancel () {
      const start = Date.now()
      // pg cancels a running Query object through a new connection that
      // sends the session's BackendKeyData.
      const q = new pg.Query('select pg_sleep(60)')
      const done = new Promise((resolve, reject) => { q.on('error', reject); q.on('end', resolve) })
      c.query(q)
      const timer = setTimeout(() => client(false).cancel(c, q), 1000)
      try {
        await done.then(() => { throw new StepFailed('not cancelled') }, (e) => expect('sqlstate', e.code, '57014'))
      } finally { clearTimeout(timer) }
      expect('after', (await c.query("select 'ok' as v")).rows[0].v, 'ok')
      return `cancelled after ${(Date.now() - start) / 1000}s`
    },
    copy_in: () => copyIn(),
    copy_out: () => copyOut(),
    async shard_insert () {
      // Queued queries: pg sends each one as the previous answer arrives.
      await Promise.all(KEYS.map((k) => c.query(`insert into ${P}_items (id, v) values ($1, $2)`, [k, `item ${k}`])))
    },
    async shard_read () {
      for (const k of KEYS) {
        const r = await c.query({ name: 'compat_read', text: `select v from ${P}_items where id = $1`, values: [k] })
        expect(`key ${k}`, r.rows, [{ v: `item ${k}` }])
      }
      return 'a named statement'
    },
    async shard_count () {
      const r = await c.query(`select count(*) as n, sum(id) as s from ${P}_items`)
      expect('count, sum', r.rows[0], { n: '1000', s: String(KEYS.reduce((a, b) => a + b, 0)) })
    },
    async shard_order_limit () {
      const r = await c.query(`select id, v from ${P}_items order by id desc limit 3`)
      expect('rows', r.rows, KEYS.slice(-3).reverse().map((k) => ({ id: String(k), v: `item ${k}` })))
    },
  }

  async function types (binary, ids) {
    const ph = CASTS.map((t, i) => `$${i + 2}::${t}`).join(', ')
    const sql = `insert into ${P}_types (id, ${COLS.join(', ')}) values ($1, ${ph})`
    await c.query(sql, [ids[0], ...COLS.map((col) => col === 'j' ? JSON.stringify(PARAMS.j) : PARAMS[col])])
    await c.query(sql, [ids[1], ...COLS.map(() => null)])
    const r = await c.query({
      text: `select ${COLS.join(', ')} from ${P}_types where id = any($1) order by id`,
      values: [ids], binary,
    })
    expect('rows', r.rows.length, 2)
    compareRow(r.rows[0], false)
    compareRow(r.rows[1], true)
  }

  async function copyIn () {
    await new Promise((resolve, reject) => {
      const s = c.query(copyFrom(`copy ${P}_copy (id, v, n) from stdin`))
      s.on('error', reject); s.on('finish', resolve)
      s.end(COPY_LINES.join('\n') + '\n')
    })
    const r = await c.query(`select count(*)::int as n, sum(id)::int as s, sum(n)::text as t from ${P}_copy`)
    expect('table', r.rows[0], { n: 1000, s: 500500, t: '501000.0' })
  }
  async function copyOut () {
    const chunks = []
    await new Promise((resolve, reject) => {
      const s = c.query(copyTo(`copy (select id, v, n from ${P}_copy order by id) to stdout`))
      s.on('data', (d) => chunks.push(d)); s.on('error', reject); s.on('end', resolve)
    })
    expect('rows', Buffer.concat(chunks).toString().split('\n').slice(0, -1), COPY_LINES)
  }

  for (const [name, fn] of Object.entries(steps)) {
    await R.run(name, fn)
    await c.query('rollback').catch(() => {})
    if (name === 'types_text') {
      R.na('types_binary', 'pg 8.23.1 decodes every DataRow value as UTF-8 text before its binary parsers see it, so binary values ' +
        'that are not valid UTF-8 come out corrupted (int4 -2147483648 reads as -272646912), the same straight against PostgreSQL')
    }
  }
  await c.end()
}

main().catch((e) => { console.error(e); process.exit(1) })
