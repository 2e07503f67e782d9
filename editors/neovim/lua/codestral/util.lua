-- Small helpers shared by the renderers, written to work from Neovim 0.7 on.
local api = vim.api
local M = {}

-- Client methods take `:` from Neovim 0.11 on, `.` before.
function M.call(client, method, ...)
  if vim.fn.has('nvim-0.11') == 1 then
    return client[method](client, ...)
  end
  return client[method](...)
end

-- What is left of `text`, asked at (`row0`, `col0`) of `bufnr` (0-based), after what was typed since
-- at the cursor of the current window, and that cursor (row, col): nil when the cursor left the
-- buffer, went back before the place, or typed something else.
function M.rest_after_typing(bufnr, row0, col0, text)
  if not text or api.nvim_get_current_buf() ~= bufnr then
    return nil
  end
  local row, col = unpack(api.nvim_win_get_cursor(0))
  row = row - 1
  if row < row0 or (row == row0 and col < col0) then
    return nil
  end
  local ok, got = pcall(api.nvim_buf_get_text, bufnr, row0, col0, row, col, {})
  local typed = ok and table.concat(got, '\n')
  if not typed or #typed >= #text or text:sub(1, #typed) ~= typed then
    return nil
  end
  return text:sub(#typed + 1), row, col
end

-- Runs an item's command (`codestral.accept`) after the text was inserted.
function M.exec(client, command, bufnr)
  if not (client and command) then
    return
  end
  if client.exec_cmd then
    return client:exec_cmd(command, { bufnr = bufnr })
  end
  local params = { command = command.command, arguments = command.arguments }
  M.call(client, 'request', 'workspace/executeCommand', params, function() end, bufnr)
end

-- Tells the server how much of a suggestion was taken by word-wise accepts.
function M.partial(client, command, accepted)
  local id = command and command.arguments and command.arguments[1]
  if client and id ~= nil then
    M.call(client, 'notify', 'codestral/didPartiallyAccept', { id = id, acceptedLength = vim.fn.strchars(accepted) })
  end
end

-- The next word of a suggestion: a line break with its indent, or blanks then a word or a run of symbols.
function M.next_word(text)
  return text:match('^\r?\n[ \t]*') or text:match('^[ \t]*[%w_]+') or text:match('^[ \t]*[^%w_%s]+') or text
end

-- The part of a suggestion that a partial accept takes: `kind` 'line' up to the end of its first
-- line (with the line break), else (true, 'word') its next word.
function M.next_part(text, kind)
  if kind == 'line' then
    return text:match('^[^\n]*\n') or text
  end
  return M.next_word(text)
end

-- Inserts text at the cursor of the current window and moves the cursor after it.
function M.insert(text)
  local row, col = unpack(api.nvim_win_get_cursor(0))
  local lines = vim.split(text, '\n', { plain = true })
  api.nvim_buf_set_text(0, row - 1, col, row - 1, col, lines)
  local last = #lines == 1 and col + #lines[1] or #lines[#lines]
  api.nvim_win_set_cursor(0, { row + #lines - 1, last })
end

-- Byte index in `line` of the LSP character `index` (utf-16 units unless `encoding` is utf-8 or
-- utf-32); written out because vim.str_byteindex changed its signature in 0.11.
function M.byte_of(line, index, encoding)
  if encoding == 'utf-8' then
    return math.min(index, #line)
  end
  local byte, units = 0, 0
  while byte < #line and units < index do
    local c = line:byte(byte + 1)
    local len = c >= 0xF0 and 4 or c >= 0xE0 and 3 or c >= 0xC0 and 2 or 1
    units = units + ((len == 4 and encoding ~= 'utf-32') and 2 or 1)
    byte = byte + len
  end
  return byte
end

-- The text to insert at the cursor (row 0-based, col a byte) for an InlineCompletionItem, or nil.
-- An item whose range replaces what was typed before the cursor and text after it (auto-closed
-- brackets) becomes a plain insertion when it keeps that text: `foo(|)` with `bar(1))` over `)`
-- inserts `bar(1)`, so nothing is drawn over the code after the cursor. Returns the insertion and
-- whether it still needs the item's range on accept (a replacement that changes the code after the
-- cursor: `end_col` is where that range ends).
function M.insertion(item, bufnr, row, col, encoding)
  local text = item and item.insertText
  if type(text) == 'table' then
    text = text.value
  end
  if type(text) ~= 'string' or text == '' then
    return nil
  end
  local r = item.range
  if not r then
    return text
  end
  if r.start.line ~= row or r['end'].line ~= row then
    return nil -- a range over other lines: not something a ghost at the cursor can show
  end
  local line = api.nvim_buf_get_lines(bufnr, row, row + 1, true)[1]
  local s, e = M.byte_of(line, r.start.character, encoding), M.byte_of(line, r['end'].character, encoding)
  if s > col or e < col then
    return nil
  end
  local typed, after = line:sub(s + 1, col), line:sub(col + 1, e)
  if text:sub(1, #typed) ~= typed then
    return nil
  end
  text = text:sub(#typed + 1)
  if after == '' then
    return text ~= '' and text or nil
  end
  if #text > #after and text:sub(-#after) == after then
    return text:sub(1, #text - #after)
  end
  return text, e
end

return M
