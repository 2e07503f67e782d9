-- Headless unit test of util.insertion: what the ghost text shows for an inline item with a range;
-- and util.next_part, what a word or line accept takes.
-- An item that replaces auto-closed brackets after the cursor and ends with them is drawn as the
-- plain insertion before them (never over them); typed text before the cursor is skipped.
--   nvim --headless -u NONE -i NONE -c 'luafile test/insertion.lua'
local root = vim.fn.fnamemodify(debug.getinfo(1, 'S').source:sub(2), ':p:h:h')
vim.opt.runtimepath:prepend(root)
local util = require('codestral.util')
local buf = vim.api.nvim_create_buf(false, true)

local function case(line, col, item, want, want_end)
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, { line })
  local got, replace_end = util.insertion(item, buf, 0, col, 'utf-16')
  assert(got == want and replace_end == want_end, ('%q at %d: got %q %s, want %q %s'):format(
    line, col, tostring(got), tostring(replace_end), tostring(want), tostring(want_end)))
end
local function range(s, e)
  return { start = { line = 0, character = s }, ['end'] = { line = 0, character = e } }
end

local ok, err = pcall(function()
  -- No range: the text as it is.
  case('x = foo()', 8, { insertText = 'bar(1)' }, 'bar(1)')
  -- Over the `)` after the cursor, ending with it: insert before it.
  case('x = foo()', 8, { insertText = 'bar(1))', range = range(8, 9) }, 'bar(1)')
  -- `reduce((a, b) => |);`: the range covers `);`... only `)` here, and the text keeps it.
  case('xs.reduce((a, b) => );', 20, { insertText = 'a + b)', range = range(20, 21) }, 'a + b')
  -- What was typed before the cursor is not drawn again.
  case('    ret', 7, { insertText = 'return a + b', range = range(4, 7) }, 'urn a + b')
  -- Non-ASCII before the cursor: UTF-16 columns (é is 1 unit, 2 bytes).
  case("s = 'é'(", 9, { insertText = 'x)', range = range(8, 8) }, 'x)')
  -- A replacement that changes the code after the cursor: shown, and replaced on accept.
  case('f(a, b)', 2, { insertText = 'x', range = range(2, 6) }, 'x', 6)
  -- A range that does not contain the cursor: nothing.
  case('abc', 1, { insertText = 'x', range = range(2, 3) }, nil)

  -- Partial accepts: a word, a line with its line break.
  assert(util.next_part('a + b', 'word') == 'a' and util.next_part(' + b', true) == ' +')
  assert(util.next_part('x = 1\n    y = 2', 'line') == 'x = 1\n')
  assert(util.next_part('x = 1', 'line') == 'x = 1')
end)
io.stderr:write((ok and 'PASS: util.insertion' or ('FAIL: ' .. tostring(err))) .. '\n')
vim.cmd(ok and 'qall!' or 'cquit!')
