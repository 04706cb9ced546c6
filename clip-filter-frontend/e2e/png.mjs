// A tiny PNG encoder (RGB, 8 bits, no interlace): test images are generated, never checked in.
import { deflateSync } from 'node:zlib'

const CRC_TABLE = new Uint32Array(256).map((_, n) => {
  let c = n
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
  return c >>> 0
})

function crc32(buf) {
  let c = 0xffffffff
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8)
  return (c ^ 0xffffffff) >>> 0
}

function chunk(type, data) {
  const out = Buffer.alloc(12 + data.length)
  out.writeUInt32BE(data.length, 0)
  out.write(type, 4, 'latin1')
  data.copy(out, 8)
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length)
  return out
}

/** pixel(x, y) -> [r, g, b] in 0..255. */
export function encodePng(width, height, pixel) {
  const raw = Buffer.alloc((width * 3 + 1) * height)
  let o = 0
  for (let y = 0; y < height; y++) {
    raw[o++] = 0 // filter: none
    for (let x = 0; x < width; x++) {
      const [r, g, b] = pixel(x, y)
      raw[o++] = r
      raw[o++] = g
      raw[o++] = b
    }
  }
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(width, 0)
  ihdr.writeUInt32BE(height, 4)
  ihdr[8] = 8 // bit depth
  ihdr[9] = 2 // colour type: RGB
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ])
}

const PALETTE = [
  [220, 40, 40],
  [40, 160, 60],
  [40, 80, 220],
  [240, 200, 40],
  [150, 60, 200],
  [30, 180, 190],
]

/** A distinct test picture per seed: a coloured shape on a contrasting gradient. */
export function testImage(seed, size = 64) {
  const [r, g, b] = PALETTE[seed % PALETTE.length]
  const shape = seed % 3
  const c = size / 2
  return encodePng(size, size, (x, y) => {
    const inside =
      shape === 0
        ? Math.abs(x - c) < size / 4 && Math.abs(y - c) < size / 4
        : shape === 1
          ? (x - c) ** 2 + (y - c) ** 2 < (size / 3) ** 2
          : y > size / 4 && Math.abs(x - c) < (y - size / 4) / 1.5
    if (inside) return [r, g, b]
    const t = Math.round((255 * (x + y)) / (2 * size))
    return [255 - t / 3, 255 - t / 4, 255 - t / 5].map(Math.round)
  })
}
