/** "camera=fuji, year=2020" (commas or new lines) -> {camera: "fuji", year: "2020"}. */
export function parseFilters(input: string): { filters: Record<string, string>; errors: string[] } {
  const filters: Record<string, string> = {}
  const errors: string[] = []
  for (const raw of input.split(/[,\n]/)) {
    const part = raw.trim()
    if (!part) continue
    const eq = part.indexOf('=')
    if (eq <= 0) {
      errors.push(`"${part}" is not key=value`)
      continue
    }
    filters[part.slice(0, eq).trim()] = part.slice(eq + 1).trim()
  }
  return { filters, errors }
}

export const COLLECTION_NAME = /^[A-Za-z0-9_.-]{1,64}$/
