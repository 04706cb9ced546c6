import { cleanup, fireEvent, render, screen, waitFor } from '@testing-library/react'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { App } from '../App'
import { SafeImg } from '../components/SafeImg'
import { ApiError, getInfo, listCollections } from '../lib/api'
import { currentApiKey, forgetApiKey, onAuthRequired, setApiKey } from '../lib/auth'
import { readyInfo, stubFetch } from './helpers'

const KEY = 'cfk_test-key-0123456789'

function authOf(init: RequestInit | undefined): string | undefined {
  return new Headers(init?.headers).get('Authorization') ?? undefined
}

beforeEach(() => {
  window.localStorage.clear()
  window.location.hash = ''
})
afterEach(() => {
  cleanup()
  vi.unstubAllGlobals()
  forgetApiKey()
})

describe('the API key in requests', () => {
  it('sends no Authorization header without a key, and the Bearer key once one is set', async () => {
    const { calls } = stubFetch({ 'GET /info': () => ({ body: readyInfo }) })
    await getInfo()
    expect(authOf(calls[0].init)).toBeUndefined()
    setApiKey(KEY)
    expect(window.localStorage.getItem('clip-filter.api-key')).toBe(KEY)
    await getInfo()
    expect(authOf(calls[1].init)).toBe(`Bearer ${KEY}`)
    forgetApiKey()
    expect(window.localStorage.getItem('clip-filter.api-key')).toBeNull()
    await getInfo()
    expect(authOf(calls[2].init)).toBeUndefined()
  })

  it('tells the app when the API answers 401, and still throws the error', async () => {
    stubFetch({
      'GET /collections': () => ({ status: 401, body: { error: { code: 'unauthorized', message: 'This API needs a key.' } } }),
    })
    const heard = vi.fn()
    const stop = onAuthRequired(heard)
    const err = await listCollections().catch((e) => e)
    stop()
    expect(err).toBeInstanceOf(ApiError)
    expect(err.status).toBe(401)
    expect(heard).toHaveBeenCalledTimes(1)
  })
})

describe('the key dialog', () => {
  it('asks for a key on 401, keeps it, reloads with it, and forgets it on request', async () => {
    const { calls } = stubFetch({
      'GET /info': (init) =>
        authOf(init) === `Bearer ${KEY}`
          ? { body: readyInfo }
          : { status: 401, body: { error: { code: 'unauthorized', message: 'This API needs a key.' } } },
    })
    render(<App />)
    const dialog = await screen.findByTestId('key-dialog')
    expect(dialog.getAttribute('role')).toBe('dialog')
    expect(screen.queryByTestId('forget-key')).toBeNull()
    fireEvent.change(screen.getByTestId('key-input'), { target: { value: `  ${KEY} ` } })
    fireEvent.click(screen.getByTestId('key-submit'))
    await waitFor(() => expect(screen.getByTestId('model-summary').textContent).toContain('clip-filter-tiny'))
    expect(screen.queryByTestId('key-dialog')).toBeNull()
    expect(currentApiKey()).toBe(KEY)
    expect(authOf(calls[calls.length - 1].init)).toBe(`Bearer ${KEY}`)

    fireEvent.click(screen.getByTestId('forget-key'))
    expect(window.localStorage.getItem('clip-filter.api-key')).toBeNull()
    await screen.findByTestId('key-dialog') // the next call answers 401 again
    expect(authOf(calls[calls.length - 1].init)).toBeUndefined()
  })

  it('says so when the stored key is refused', async () => {
    setApiKey('cfk_revoked')
    stubFetch({ 'GET /info': () => ({ status: 401, body: { error: { code: 'unauthorized', message: 'revoked' } } }) })
    render(<App />)
    await screen.findByTestId('key-dialog')
    expect(screen.getByRole('alert').textContent).toMatch(/refused/) // the only alert: no "cannot be reached" banner
    expect(screen.getByTestId('forget-key')).toBeTruthy()
  })
})

describe('images with a key', () => {
  it('loads API images with the key into an object URL', async () => {
    setApiKey(KEY)
    const fetchFn = vi.fn(async (_input: RequestInfo | URL, _init?: RequestInit) =>
      new Response(new Blob([new Uint8Array([137, 80])], { type: 'image/png' })),
    )
    vi.stubGlobal('fetch', fetchFn)
    const created = vi.fn(() => 'blob:http://localhost/1')
    vi.stubGlobal('URL', Object.assign(URL, { createObjectURL: created, revokeObjectURL: vi.fn() }))
    render(<SafeImg src="/api/collections/c/items/1/thumbnail" alt="pic" />)
    await waitFor(() => expect(screen.getByRole('img', { name: 'pic' }).getAttribute('src')).toBe('blob:http://localhost/1'))
    expect(authOf(fetchFn.mock.calls[0][1])).toBe(`Bearer ${KEY}`)
  })

  it('leaves plain <img src> alone without a key', () => {
    const fetchFn = vi.fn()
    vi.stubGlobal('fetch', fetchFn)
    render(<SafeImg src="/api/collections/c/items/1/thumbnail" alt="pic" />)
    expect(screen.getByRole('img', { name: 'pic' }).getAttribute('src')).toBe('/api/collections/c/items/1/thumbnail')
    expect(fetchFn).not.toHaveBeenCalled()
  })
})
