// Fit 2-D map coordinates into an SVG box: y grows upwards in the data and downwards on screen.

export interface XY {
  x: number
  y: number
}

export interface Extent {
  minX: number
  maxX: number
  minY: number
  maxY: number
}

export interface MapScale {
  extent: Extent
  toScreen: (p: XY) => XY
}

/** Bounds of the finite points; a zero-width axis is widened to ±0.5 so every point sits in the middle. */
export function computeExtent(points: XY[]): Extent {
  const finite = points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y))
  if (finite.length === 0) return { minX: -1, maxX: 1, minY: -1, maxY: 1 }
  let minX = Infinity
  let maxX = -Infinity
  let minY = Infinity
  let maxY = -Infinity
  for (const p of finite) {
    minX = Math.min(minX, p.x)
    maxX = Math.max(maxX, p.x)
    minY = Math.min(minY, p.y)
    maxY = Math.max(maxY, p.y)
  }
  if (maxX - minX < 1e-12) {
    minX -= 0.5
    maxX += 0.5
  }
  if (maxY - minY < 1e-12) {
    minY -= 0.5
    maxY += 0.5
  }
  return { minX, maxX, minY, maxY }
}

export function makeScale(points: XY[], width: number, height: number, padding: number): MapScale {
  const extent = computeExtent(points)
  const w = Math.max(1, width - 2 * padding)
  const h = Math.max(1, height - 2 * padding)
  const toScreen = (p: XY): XY => ({
    x: padding + ((p.x - extent.minX) / (extent.maxX - extent.minX)) * w,
    y: padding + (1 - (p.y - extent.minY) / (extent.maxY - extent.minY)) * h,
  })
  return { extent, toScreen }
}
