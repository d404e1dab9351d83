'use strict'

/*
 * connect-tokenstore against a real PostgreSQL with tokenstore 1.2: the
 * database is the one PGHOST, PGPORT, PGDATABASE and PGUSER name.  Every test
 * starts from an empty session table (clear()), so the database must be one
 * of its own.  Run with test.sh.
 */

const { describe, it, before, after, beforeEach } = require('node:test')
const assert = require('node:assert/strict')
const express = require('express')
const session = require('express-session')
const request = require('supertest')
const pg = require('pg')
const TokenstoreStore = require('..')

const SECRET = 'keyboard cat'
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/* A pool whose statements are recorded in pool.statements (the real pool runs them). */
function recordingPool (config) {
  const pool = new pg.Pool(config)
  const query = pool.query.bind(pool)
  pool.statements = []
  pool.query = (text, values) => {
    pool.statements.push(typeof text === 'string' ? text : text.text)
    return query(text, values)
  }
  return pool
}

function createApp (store, options, handler) {
  const app = express()
  app.use(session(Object.assign({
    store,
    secret: SECRET,
    resave: false,
    saveUninitialized: false
  }, options)))
  app.use(handler)
  app.use((err, req, res, next) => {
    res.status(500).end('error: ' + err.message)
  })
  return app
}

/* The "name=value" of the session cookie a response set. */
function cookie (res) {
  const set = res.headers['set-cookie']
  assert.ok(set && set.length, 'the response sets a cookie')
  return set[0].split(';')[0]
}

/* The session id inside a signed session cookie. */
function sidOf (cookieString) {
  const value = decodeURIComponent(cookieString.split('=')[1])
  assert.ok(value.startsWith('s:'))
  return value.slice(2, value.lastIndexOf('.'))
}

function hasCookie (res) {
  return Boolean(res.headers['set-cookie'])
}

/* store.method(...args) as a promise, through its callback. */
function call (store, method, ...args) {
  return new Promise((resolve, reject) => {
    store[method](...args, (err, value) => (err ? reject(err) : resolve(value)))
  })
}

let pool
let store

before(async () => {
  pool = recordingPool()
  store = new TokenstoreStore({ pool })
  // every app below registers its connect/disconnect listeners on this store
  store.setMaxListeners(100)
  const { rows } = await pool.query(
    "SELECT extversion FROM pg_extension WHERE extname = 'tokenstore'")
  assert.equal(rows.length, 1, 'tokenstore is created in ' + (process.env.PGDATABASE || 'the database'))
})

after(async () => {
  await store.close()
  await pool.end()
})

beforeEach(async () => {
  await call(store, 'clear')
  pool.statements.length = 0
})

describe('express-session with the store', { timeout: 30000 }, () => {
  it('creates a session and loads it from the cookie on the next request', async () => {
    const app = createApp(store, {}, (req, res) => {
      if (req.path === '/login') req.session.user = 'alice'
      req.session.views = (req.session.views || 0) + 1
      res.json({ user: req.session.user || null, views: req.session.views })
    })
    const first = await request(app).get('/login').expect(200, { user: 'alice', views: 1 })
    assert.equal(await call(store, 'length'), 1)
    const c = cookie(first)
    await request(app).get('/').set('Cookie', c).expect(200, { user: 'alice', views: 2 })
    await request(app).get('/').set('Cookie', c).expect(200, { user: 'alice', views: 3 })
    const stored = await call(store, 'get', sidOf(c))
    assert.equal(stored.views, 3)
    assert.equal(stored.user, 'alice')
  })

  it('saves no uninitialized session (saveUninitialized: false)', async () => {
    const app = createApp(store, {}, (req, res) => res.end('hello'))
    const res = await request(app).get('/').expect(200, 'hello')
    assert.equal(hasCookie(res), false)
    assert.equal(await call(store, 'length'), 0)
    assert.ok(!pool.statements.some((q) => q.includes('token_save')), 'no token_save')
  })

  it('round-trips nested objects, key order and "\\u0000" byte for byte', async () => {
    const data = {
      zeta: 1,
      alpha: { nested: { deeper: [1, 'two', { three: null }] }, b: true, a: false },
      nul: 'a\u0000b',
      'key\u0000with nul': 'x',
      unicode: 'h\u00e9llo \u2603 \ud83d\ude00',
      lone: '\ud800',
      quote: '"\\/\b\f\n\r\t',
      middle: 3.25,
      empty: {},
      list: []
    }
    const app = createApp(store, {}, (req, res) => {
      if (req.method === 'POST') {
        for (const key of Object.keys(data)) req.session[key] = data[key]
        res.end('saved')
        return
      }
      const copy = {}
      for (const key of Object.keys(req.session)) {
        if (key !== 'cookie') copy[key] = req.session[key]
      }
      res.type('json').end(JSON.stringify(copy))
    })
    const saved = await request(app).post('/').expect(200, 'saved')
    const c = cookie(saved)
    const res = await request(app).get('/').set('Cookie', c).expect(200)
    assert.equal(res.text, JSON.stringify(data), 'same keys in the same order, same values')

    // the payload in the database is exactly JSON.stringify of the session
    const { rows } = await pool.query('SELECT tokenstore.token_data($1) AS data', [sidOf(c)])
    const raw = rows[0].data
    assert.ok(Buffer.isBuffer(raw))
    const parsed = JSON.parse(raw.toString('utf8'))
    assert.deepEqual(Object.keys(parsed), ['cookie', ...Object.keys(data)])
    assert.ok(raw.equals(Buffer.from(JSON.stringify(parsed), 'utf8')), 'stored as JSON.stringify wrote it')
    assert.ok(raw.includes(Buffer.from('"nul":"a\\u0000b"')), 'the escaped NUL is in the bytes')
  })

  it('regenerate ends the old session id', async () => {
    const app = createApp(store, {}, (req, res, next) => {
      if (req.path === '/visit') {
        req.session.visited = true
        return res.json({ id: req.sessionID })
      }
      if (req.path === '/login') {
        return req.session.regenerate((err) => {
          if (err) return next(err)
          req.session.user = 'bob'
          res.json({ id: req.sessionID })
        })
      }
      res.json({ user: req.session.user || null, visited: req.session.visited || false })
    })
    const visit = await request(app).get('/visit').expect(200)
    const oldCookie = cookie(visit)
    const oldSid = sidOf(oldCookie)
    assert.equal(visit.body.id, oldSid)

    const login = await request(app).get('/login').set('Cookie', oldCookie).expect(200)
    const newCookie = cookie(login)
    assert.notEqual(sidOf(newCookie), oldSid)
    assert.equal(login.body.id, sidOf(newCookie))

    assert.equal(await call(store, 'get', oldSid), null, 'the old id is gone')
    assert.equal((await call(store, 'get', sidOf(newCookie))).user, 'bob')
    await request(app).get('/').set('Cookie', oldCookie).expect(200, { user: null, visited: false })
    await request(app).get('/').set('Cookie', newCookie).expect(200, { user: 'bob', visited: false })
    assert.equal(await call(store, 'length'), 1)
  })

  it('destroy ends the session', async () => {
    const app = createApp(store, {}, (req, res, next) => {
      if (req.path === '/login') {
        req.session.user = 'carol'
        return res.end('in')
      }
      if (req.path === '/logout') {
        return req.session.destroy((err) => (err ? next(err) : res.end('out')))
      }
      res.json({ user: req.session.user || null })
    })
    const login = await request(app).get('/login').expect(200, 'in')
    const c = cookie(login)
    await request(app).get('/').set('Cookie', c).expect(200, { user: 'carol' })
    await request(app).get('/logout').set('Cookie', c).expect(200, 'out')
    assert.equal(await call(store, 'get', sidOf(c)), null)
    await request(app).get('/').set('Cookie', c).expect(200, { user: null })
    assert.equal(await call(store, 'length'), 0)
  })

  it('unset: "destroy" destroys the session when req.session is deleted', async () => {
    const app = createApp(store, { unset: 'destroy' }, (req, res) => {
      if (req.path === '/login') req.session.user = 'dave'
      if (req.path === '/drop') req.session = null
      res.end('ok')
    })
    const c = cookie(await request(app).get('/login').expect(200))
    assert.ok(await call(store, 'get', sidOf(c)))
    await request(app).get('/drop').set('Cookie', c).expect(200)
    assert.equal(await call(store, 'get', sidOf(c)), null)
  })

  it("an expired cookie's session is gone", async () => {
    let count = 0
    const app = createApp(store, { cookie: { maxAge: 400 } }, (req, res) => {
      req.session.num = req.session.num || ++count
      res.end('session ' + req.session.num)
    })
    const first = await request(app).get('/').expect(200, 'session 1')
    const c = cookie(first)
    await request(app).get('/').set('Cookie', c).expect(200, 'session 1')
    await sleep(600)
    assert.equal(await call(store, 'get', sidOf(c)), null, 'the store has no expired session')
    const next = await request(app).get('/').set('Cookie', c).expect(200, 'session 2')
    assert.notEqual(sidOf(cookie(next)), sidOf(c), 'a new id')
  })

  it('rolling touch keeps a session alive past its maxAge', async () => {
    const app = createApp(store, { rolling: true, cookie: { maxAge: 1500 } }, (req, res) => {
      if (req.path === '/login') req.session.user = 'erin'
      res.json({ user: req.session.user || null })
    })
    const c = cookie(await request(app).get('/login').expect(200, { user: 'erin' }))
    for (let i = 0; i < 3; i++) {
      await sleep(700)
      pool.statements.length = 0
      const res = await request(app).get('/').set('Cookie', c).expect(200, { user: 'erin' })
      assert.ok(hasCookie(res), 'rolling sets the cookie again')
      assert.equal(sidOf(cookie(res)), sidOf(c))
      // the deadline moved with the cookie: touch saves again
      assert.ok(pool.statements.some((q) => q.includes('token_touch') && q.includes('token_save')),
        'touch saved the moved deadline: ' + pool.statements.join(' | '))
    }
    // 2.1 s after the login, past its 1.5 s maxAge: alive thanks to the touches
    assert.equal((await call(store, 'get', sidOf(c))).user, 'erin')
    await sleep(1700)
    assert.equal(await call(store, 'get', sidOf(c)), null, 'no request for longer than maxAge: gone')
    await request(app).get('/').set('Cookie', c).expect(200, { user: null })
  })

  it('touch with a browser-session cookie is a token_touch, and the idle timeout slides', async () => {
    // tokenstore.default_idle_timeout for the sessions this pool saves: 2 s
    const idlePool = recordingPool({ options: '-c tokenstore.default_idle_timeout=2' })
    const idleStore = new TokenstoreStore({ pool: idlePool })
    try {
      const app = createApp(idleStore, {}, (req, res) => {
        if (req.path === '/login') req.session.user = 'frank'
        res.json({ user: req.session.user || null })
      })
      const c = cookie(await request(app).get('/login').expect(200, { user: 'frank' }))
      for (let i = 0; i < 3; i++) {
        await sleep(1000)
        idlePool.statements.length = 0
        await request(app).get('/').set('Cookie', c).expect(200, { user: 'frank' })
        assert.deepEqual(idlePool.statements.map((q) => q.match(/tokenstore\.\w+/g).join('+')),
          ['tokenstore.token_data', 'tokenstore.token_touch'])
      }
      // 3 s after the login, past the 2 s idle timeout: alive
      assert.equal((await call(idleStore, 'get', sidOf(c))).user, 'frank')
      await sleep(3000)
      assert.equal(await call(idleStore, 'get', sidOf(c)), null, 'idle for 3 s: gone')
    } finally {
      await idlePool.end()
    }
  })

  it('all, length and clear see the sessions, keyed by token_id', async () => {
    const app = createApp(store, {}, (req, res) => {
      req.session.name = req.query.name
      res.end('ok')
    })
    const sids = []
    for (const name of ['gina', 'hugo']) {
      sids.push(sidOf(cookie(await request(app).get('/?name=' + name).expect(200))))
    }
    assert.equal(await call(store, 'length'), 2)
    const all = await call(store, 'all')
    const keys = Object.keys(all)
    assert.equal(keys.length, 2)
    for (const key of keys) {
      assert.match(key, /^[0-9a-f]{32}$/)
      assert.ok(!sids.includes(key), 'a handle, not the session id')
    }
    assert.deepEqual(Object.values(all).map((s) => s.name).sort(), ['gina', 'hugo'])
    for (const s of Object.values(all)) assert.equal(typeof s.cookie, 'object')

    await call(store, 'clear')
    assert.equal(await call(store, 'length'), 0)
    assert.deepEqual(await call(store, 'all'), {})
    for (const sid of sids) assert.equal(await call(store, 'get', sid), null)
  })

  it('concurrent first saves of one id do not error', async () => {
    const fixed = 'fixed-session-id-0123456789abcdef'
    const app = createApp(store, { genid: () => fixed }, (req, res) => {
      req.session.n = Number(req.query.n)
      res.end('saved ' + req.query.n)
    })
    const n = 8
    const results = await Promise.all(Array.from({ length: n }, (_, i) =>
      request(app).get('/?n=' + i)))
    for (let i = 0; i < n; i++) {
      assert.equal(results[i].status, 200, results[i].text)
      assert.equal(results[i].text, 'saved ' + i)
    }
    assert.equal(await call(store, 'length'), 1)
    const stored = await call(store, 'get', fixed)
    assert.ok(stored.n >= 0 && stored.n < n)
  })

  it('handles reserved properties in storage', async () => {
    let sid
    const app = createApp(store, {}, (req, res) => {
      sid = req.session.id
      req.session.num = req.session.num || 1
      res.end('session saved')
    })
    const res = await request(app).get('/').expect(200, 'session saved')
    const sess = await call(store, 'get', sid)
    sess.save = 'nope' // save is reserved
    await call(store, 'set', sid, sess)
    await request(app).get('/').set('Cookie', cookie(res)).expect(200, 'session saved')
  })

  it('passes a store error to next()', async () => {
    // an id of 8 bytes: tokenstore wants 16 to 1024
    const app = createApp(store, { genid: () => 'tooshort' }, (req, res, next) => {
      req.session.x = 1
      req.session.save((err) => (err ? next(err) : res.end('saved')))
    })
    await request(app).get('/').expect(500, /16 to 1024 bytes/)
  })
})

describe('store methods with callbacks', { timeout: 30000 }, () => {
  const sid = 'direct-session-id-0123456789abcdef'
  const inMinutes = (m) => new Date(Date.now() + m * 60000)

  async function deadline (id) {
    const { rows } = await pool.query('SELECT expires_at FROM tokenstore.token_check($1)', [id])
    return rows.length ? rows[0].expires_at.getTime() : null
  }

  it('get of an unknown id gives null without an error', async () => {
    assert.equal(await call(store, 'get', 'unknown-session-id-0123456789'), null)
  })

  it('set then get gives the session back', (t, done) => {
    const expires = inMinutes(10)
    const sess = { cookie: { originalMaxAge: 600000, expires, httpOnly: true, path: '/' }, a: { b: [1, 2] } }
    store.set(sid, sess, (err) => {
      if (err) return done(err)
      store.get(sid, (err, got) => {
        if (err) return done(err)
        assert.deepEqual(got, JSON.parse(JSON.stringify(sess)))
        done()
      })
    })
  })

  it('the deadline is the cookie expiry, or now + ttl without one', async () => {
    const expires = inMinutes(30)
    await call(store, 'set', sid, { cookie: { expires } })
    assert.equal(await deadline(sid), expires.getTime())

    const short = new TokenstoreStore({ pool, ttl: 120 })
    const t0 = Date.now()
    await call(short, 'set', sid, { cookie: { expires: null }, x: 1 })
    const d = await deadline(sid)
    assert.ok(d >= t0 + 120000 && d <= Date.now() + 120000, 'now + 120 s')

    const t1 = Date.now()
    await call(store, 'set', sid, { cookie: {}, x: 2 }) // default ttl: one day
    const e = await deadline(sid)
    assert.ok(e >= t1 + 86400000 && e <= Date.now() + 86400000, 'now + one day')
  })

  it('a session saved with a past expiry is gone at once', async () => {
    await call(store, 'set', sid, { cookie: { expires: new Date(Date.now() - 1000) } })
    assert.equal(await call(store, 'get', sid), null)
    assert.equal(await call(store, 'length'), 0)
  })

  it('destroy removes a session; destroying an unknown one is no error', async () => {
    await call(store, 'set', sid, { cookie: { expires: inMinutes(5) } })
    await call(store, 'destroy', sid)
    assert.equal(await call(store, 'get', sid), null)
    await call(store, 'destroy', sid)
  })

  it('touch: token_touch when the expiry has not moved, a save when it has', async () => {
    const e1 = inMinutes(5)
    await call(store, 'set', sid, { cookie: { expires: e1 }, v: 1 })
    pool.statements.length = 0
    await call(store, 'touch', sid, { cookie: { expires: e1 }, v: 1 })
    assert.deepEqual(pool.statements, ['SELECT tokenstore.token_touch($1) AS live'])
    assert.equal(await deadline(sid), e1.getTime())

    const e2 = inMinutes(20)
    pool.statements.length = 0
    await call(store, 'touch', sid, { cookie: { expires: e2 }, v: 1 })
    assert.equal(pool.statements.length, 1)
    assert.match(pool.statements[0], /token_touch.*token_save/)
    assert.equal(await deadline(sid), e2.getTime())
    assert.equal((await call(store, 'get', sid)).cookie.expires, e2.toISOString())

    // a store that has not seen the session (another process) saves too
    const other = new TokenstoreStore({ pool })
    const e3 = inMinutes(30)
    await call(other, 'touch', sid, { cookie: { expires: e3 }, v: 1 })
    assert.equal(await deadline(sid), e3.getTime())
  })

  it('touch never brings back a destroyed or unknown session', async () => {
    await call(store, 'set', sid, { cookie: { expires: inMinutes(5) } })
    await call(store, 'destroy', sid)
    await call(store, 'touch', sid, { cookie: { expires: inMinutes(10) } })
    await call(store, 'touch', sid, { cookie: { expires: null } })
    await call(store, 'touch', 'never-saved-id-0123456789abcdef', { cookie: {} })
    assert.equal(await call(store, 'get', sid), null)
    assert.equal(await call(store, 'length'), 0)
  })

  it('length, all and clear', (t, done) => {
    store.set(sid, { cookie: { expires: inMinutes(5) }, k: 'one' }, (err) => {
      if (err) return done(err)
      store.set(sid + '-2', { cookie: {}, k: 'two' }, (err) => {
        if (err) return done(err)
        store.length((err, n) => {
          if (err) return done(err)
          assert.equal(n, 2)
          store.all((err, sessions) => {
            if (err) return done(err)
            assert.deepEqual(Object.values(sessions).map((s) => s.k).sort(), ['one', 'two'])
            assert.ok(Object.keys(sessions).every((k) => /^[0-9a-f]{32}$/.test(k)))
            store.clear((err) => {
              if (err) return done(err)
              store.length((err, n) => {
                if (err) return done(err)
                assert.equal(n, 0)
                done()
              })
            })
          })
        })
      })
    })
  })

  it('all leaves out payloads that are not JSON objects; length counts them', async () => {
    await pool.query('SELECT tokenstore.token_save($1, NULL, $2, now() + interval \'5 minutes\')',
      ['foreign-framework-session-0123', Buffer.from([0xff, 0x00, 0x01])])
    await call(store, 'set', sid, { cookie: {}, mine: true })
    const sessions = await call(store, 'all')
    assert.deepEqual(Object.values(sessions), [{ cookie: {}, mine: true }])
    assert.equal(await call(store, 'length'), 2)
  })

  it('concurrent first saves of one id on separate connections do not error', async () => {
    for (let round = 0; round < 10; round++) {
      const id = 'concurrent-first-save-' + round + '-0123456789'
      const saves = Array.from({ length: 8 }, (_, i) =>
        call(store, 'set', id, { cookie: { expires: inMinutes(5) }, i }))
      await Promise.all(saves)
      assert.ok((await call(store, 'get', id)).i >= 0)
    }
    assert.equal(await call(store, 'length'), 10)
  })

  it('an id shorter than 16 bytes is an error with SQLSTATE 22023', (t, done) => {
    store.set('short', { cookie: {} }, (err) => {
      assert.ok(err instanceof Error)
      assert.equal(err.code, '22023')
      done()
    })
  })

  it('calls the callback once', (t, done) => {
    let calls = 0
    store.get('unknown-session-id-0123456789', (err, sess) => {
      calls++
      assert.equal(err, null)
      assert.equal(sess, null)
      setImmediate(() => {
        assert.equal(calls, 1)
        done()
      })
    })
  })

  it('returns promises without a callback', async () => {
    await store.set(sid, { cookie: { expires: inMinutes(5) }, p: 1 })
    assert.equal((await store.get(sid)).p, 1)
    assert.equal(await store.length(), 1)
    await store.touch(sid, { cookie: { expires: inMinutes(6) }, p: 1 })
    await store.destroy(sid)
    assert.equal(await store.get(sid), null)
    await assert.rejects(store.set('short', { cookie: {} }), { code: '22023' })
  })

  it('conString: a pool of its own, ended by close()', async () => {
    const host = encodeURIComponent(process.env.PGHOST || '/var/run/postgresql')
    const user = encodeURIComponent(process.env.PGUSER || require('node:os').userInfo().username)
    const db = encodeURIComponent(process.env.PGDATABASE || process.env.PGUSER || '')
    const port = process.env.PGPORT || 5432
    const own = new TokenstoreStore({ conString: `postgresql://${user}@${host}:${port}/${db}` })
    await call(own, 'set', sid, { cookie: {}, via: 'conString' })
    assert.equal((await call(store, 'get', sid)).via, 'conString')
    await call(own, 'close')
    assert.equal(own.pool.ended, true)
    assert.equal(pool.ended, false, 'a pool passed in stays open')
  })

  it('rejects a bad ttl', () => {
    assert.throws(() => new TokenstoreStore({ pool, ttl: 0 }), TypeError)
    assert.throws(() => new TokenstoreStore({ pool, ttl: '1d' }), TypeError)
  })

  it('is an express-session Store', () => {
    assert.ok(store instanceof session.Store)
    for (const m of ['get', 'set', 'destroy', 'touch', 'all', 'length', 'clear']) {
      assert.equal(typeof store[m], 'function', m)
    }
  })
})
