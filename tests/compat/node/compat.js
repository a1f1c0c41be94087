// Shared parts of the Node.js scenarios of scripts/compat.sh: result lines,
// per-step time limits, and the values every driver round-trips.
'use strict'
process.env.TZ = 'UTC'
const fs = require('fs')

const env = process.env
const cfg = {
  host: env.COMPAT_HOST,
  port: Number(env.COMPAT_PORT),
  user: env.COMPAT_USER,
  password: env.COMPAT_PASSWORD,
  database: env.COMPAT_DB,
  ca: fs.readFileSync(env.COMPAT_CA),
  prefix: env.COMPAT_PREFIX,
  stepTimeout: Number(env.COMPAT_STEP_TIMEOUT || 30) * 1000,
}

const COLS = ['i2', 'i4', 'i8', 'n', 'f8', 't', 'b', 'bo', 'd', 'ts', 'iv', 'u', 'j', 'ia', 'ta']
const CASTS = ['int2', 'int4', 'int8', 'numeric', 'float8', 'text', 'bytea', 'bool', 'date',
  'timestamptz', 'interval', 'uuid', 'jsonb', 'int4[]', 'text[]']
// Parameter values as JS sends them, and the expected values after each
// driver's decoding is normalized by norm() to these strings.
const PARAMS = {
  i2: 12345, i4: -2147483648, i8: '9007199254740993', n: '12345678901234567890.123456789',
  f8: 3.25, t: 'héllo "wörld" \\ \'q\' ☃', b: Buffer.from([0, 255, 16, 39, 92]), bo: true,
  d: '2024-02-29', ts: new Date('2024-02-29T12:34:56.789Z'), iv: '1 day 02:03:04.5',
  u: 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', j: { a: [1, 2.5, { b: null }], s: 'x' },
  ia: [1, null, 3], ta: ['a b', 'c', null, 'q"x'],
}
const EXPECTED = {
  i2: '12345', i4: '-2147483648', i8: '9007199254740993', n: '12345678901234567890.123456789',
  f8: '3.25', t: PARAMS.t, b: '00ff10275c', bo: 'true', d: '2024-02-29',
  ts: '2024-02-29T12:34:56.789Z', iv: '1 day 02:03:04.5', u: PARAMS.u,
  j: '{"a":[1,2.5,{"b":null}],"s":"x"}', ia: '[1,null,3]', ta: '["a b","c",null,"q\\"x"]',
}

// One canonical string per decoded value.
function norm (col, v) {
  if (v === null || v === undefined) return null
  if (Buffer.isBuffer(v)) return v.toString('hex')
  if (v instanceof Date) return col === 'd' ? v.toISOString().slice(0, 10) : v.toISOString()
  if (col === 'iv' && typeof v === 'object') {
    // node-pg's PostgresInterval
    const s = (v.seconds || 0) + (v.milliseconds || 0) / 1000
    const hh = String(v.hours || 0).padStart(2, '0')
    const mm = String(v.minutes || 0).padStart(2, '0')
    const ss = (s < 10 ? '0' : '') + s
    return `${v.days || 0} day ${hh}:${mm}:${ss}`
  }
  if (typeof v === 'object') return JSON.stringify(v)
  return String(v)
}

class StepFailed extends Error {}

function expect (what, got, want) {
  const g = JSON.stringify(got); const w = JSON.stringify(want)
  if (g !== w) throw new StepFailed(`${what}: expected ${w}, got ${g}`)
}

function compareRow (row, nulls) {
  for (const c of COLS) expect(c, norm(c, row[c]), nulls ? null : EXPECTED[c])
}

function reporter (driver, version) {
  const report = (step, status, detail = '') => {
    detail = String(detail).replace(/\s+/g, ' ').slice(0, 400)
    process.stdout.write(`COMPAT\t${driver}\t${version}\t${step}\t${status}\t${detail}\n`)
  }
  return {
    report,
    na: (step, why) => report(step, 'n/a', why),
    async run (step, fn) {
      let timer
      const limit = new Promise((resolve, reject) => {
        timer = setTimeout(() => reject(new StepFailed(`no answer within ${cfg.stepTimeout / 1000}s (hang)`)), cfg.stepTimeout)
      })
      try {
        const detail = await Promise.race([fn(), limit])
        report(step, 'pass', detail || '')
        return true
      } catch (e) {
        const code = e.code && /^[0-9A-Z]{5}$/.test(e.code) ? `SQLSTATE ${e.code}: ` : ''
        report(step, 'fail', `${code}${e.message}`)
        console.error(e)
        return false
      } finally {
        clearTimeout(timer)
      }
    },
  }
}

const KEYS = Array.from({ length: 1000 }, (_, i) => (i + 1) * 7919)
const COPY_LINES = Array.from({ length: 1000 }, (_, i) => `${i + 1}\tcopy row ${i + 1}\t${i + 1}.5`)

module.exports = { cfg, COLS, CASTS, PARAMS, EXPECTED, norm, StepFailed, expect, compareRow, reporter, KEYS, COPY_LINES }
