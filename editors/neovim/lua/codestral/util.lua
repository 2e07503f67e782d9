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

-- Inserts text at the cursor of the current window and moves the cursor after it.
function M.insert(text)
  local row, col = unpack(api.nvim_win_get_cursor(0))
  local lines = vim.split(text, '\n', { plain = true })
  api.nvim_buf_set_text(0, row - 1, col, row - 1, col, lines)
  local last = #lines == 1 and col + #lines[1] or #lines[#lines]
  api.nvim_win_set_cursor(0, { row + #lines - 1, last })
end

return M
