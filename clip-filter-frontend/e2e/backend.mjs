// Starts a live clip-filter backend for the browser tests (the tiny random model, a temporary data folder,
// the built UI at /) on a free port, waits until /health/ready answers 200, and stops it afterwards.
//
//   CLIP_FILTER_VENV        the backend's virtual environment (default <repo>/.venv): runs
//                           <venv>/bin/python -m clip_filter serve --host 127.0.0.1 --port <free port>
//   CLIP_FILTER_ARTIFACTS   where the backend log and the screenshots go (default <repo>/test-artifacts)
//   CLIP_FILTER_E2E_URL     use an already running backend at this URL instead of starting one
//   CLIP_FILTER_E2E_READY_TIMEOUT_S   how long to wait for /health/ready (default 180)
//
// Anything missing (no venv, no built UI, a backend that never gets ready) throws: the tests fail, never skip.
import { spawn } from 'node:child_process'
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

export const FRONTEND = resolve(dirname(fileURLToPath(import.meta.url)), '..')
export const REPO = resolve(FRONTEND, '..')
export const ARTIFACTS = resolve(process.env.CLIP_FILTER_ARTIFACTS || join(REPO, 'test-artifacts'))
export const DIST = join(FRONTEND, 'dist')

function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer()
    srv.unref()
    srv.on('error', rej)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => res(port))
    })
  })
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

async function waitReady(baseUrl, timeoutS, exited) {
  const deadline = Date.now() + timeoutS * 1000
  let last = 'no answer yet'
  while (Date.now() < deadline) {
    if (exited()) throw new Error(`the backend exited before it was ready (${exited()}); see the log in ${ARTIFACTS}`)
    try {
      const res = await fetch(`${baseUrl}/health/ready`, { signal: AbortSignal.timeout(5000) })
      if (res.status === 200) return
      last = `${res.status} ${await res.text()}`
    } catch (e) {
      last = e.cause?.code ?? e.message
    }
    await sleep(250)
  }
  throw new Error(`the backend was not ready within ${timeoutS}s: last answer ${last}`)
}

function newestMtime(path) {
  const st = statSync(path)
  if (!st.isDirectory()) return st.mtimeMs
  const entries = readdirSync(path).filter((name) => name !== '__tests__') // tests are not built
  return Math.max(st.mtimeMs, ...entries.map((name) => newestMtime(join(path, name))))
}

/** The backend serves dist/: it must exist and be newer than the sources, or the tests would test old code. */
function checkBuilt() {
  const built = join(DIST, 'index.html')
  if (!existsSync(built)) throw new Error(`no built UI in ${DIST}: run "npm run build" first`)
  const sources = Math.max(newestMtime(join(FRONTEND, 'src')), newestMtime(join(FRONTEND, 'index.html')))
  if (sources > statSync(built).mtimeMs) {
    throw new Error(`the built UI in ${DIST} is older than src/: run "npm run build" again`)
  }
}

/** Returns {baseUrl, dataDir, stop()}. `env`: extra settings (e.g. CLIP_FILTER_AUTH); `name`: the log's name. */
export async function startBackend({ env: extraEnv = {}, name = 'e2e-backend' } = {}) {
  if (process.env.CLIP_FILTER_E2E_URL && Object.keys(extraEnv).length === 0) {
    const baseUrl = process.env.CLIP_FILTER_E2E_URL.replace(/\/+$/, '')
    await waitReady(baseUrl, Number(process.env.CLIP_FILTER_E2E_READY_TIMEOUT_S ?? 180), () => null)
    return { baseUrl, dataDir: null, stop: async () => {} }
  }
  checkBuilt()
  const venv = resolve(process.env.CLIP_FILTER_VENV || join(REPO, '.venv'))
  const python = join(venv, 'bin', 'python')
  if (!existsSync(python)) {
    throw new Error(`no backend virtual environment: ${python} does not exist (set CLIP_FILTER_VENV, or run ./run_tests.sh once)`)
  }
  const port = await freePort()
  const dataDir = mkdtempSync(join(tmpdir(), 'clip-filter-e2e-'))
  mkdirSync(ARTIFACTS, { recursive: true })
  const log = createWriteStream(join(ARTIFACTS, `${name}.log`))
  const env = {
    ...process.env,
    CLIP_MODEL: 'clip-filter-tiny',
    CLIP_PRETRAINED: 'random',
    CLIP_DEVICE: process.env.CLIP_DEVICE ?? 'cpu',
    CLIP_FILTER_DATA_DIR: dataDir,
    CLIP_FILTER_UI_DIR: DIST,
    CLIP_FILTER_LOG_LEVEL: 'info',
    ...extraEnv,
  }
  // Its own process group: stopping it stops whatever the command started.
  const args = ['-m', 'clip_filter', 'serve', '--host', '127.0.0.1', '--port', String(port)]
  const child = spawn(python, args, { env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
  child.stdout.pipe(log)
  child.stderr.pipe(log)
  let exitedWith = null
  child.on('exit', (code, signal) => {
    exitedWith = signal ? `signal ${signal}` : `exit code ${code}`
  })
  child.on('error', (e) => {
    exitedWith = `spawn error ${e.message}`
  })
  const killGroup = (signal) => {
    try {
      process.kill(-child.pid, signal)
    } catch {
      // already gone
    }
  }
  const onExit = () => killGroup('SIGKILL')
  process.on('exit', onExit)

  const stop = async () => {
    if (exitedWith === null) {
      killGroup('SIGTERM')
      for (let i = 0; i < 100 && exitedWith === null; i++) await sleep(100)
      if (exitedWith === null) killGroup('SIGKILL')
    }
    process.off('exit', onExit)
    rmSync(dataDir, { recursive: true, force: true })
  }

  const baseUrl = `http://127.0.0.1:${port}`
  try {
    await waitReady(baseUrl, Number(process.env.CLIP_FILTER_E2E_READY_TIMEOUT_S ?? 180), () => exitedWith)
  } catch (e) {
    await stop()
    throw e
  }
  return { baseUrl, dataDir, stop }
}
